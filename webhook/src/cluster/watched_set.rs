//! Following a kube watch as a complete, current set of objects: the
//! shape both policy ConfigMaps and synced objects need.

use std::collections::BTreeMap;

use futures_util::{FutureExt as _, Stream, StreamExt as _};
use kube::Resource;
use kube::runtime::watcher;

use crate::metrics::ReloadLabels;
use crate::server::State;

/// The objects a watch has shown, keyed by namespace and name; replaced
/// whole on every re-list.
pub struct WatchedSet<K> {
    current: BTreeMap<String, K>,
    buffer: BTreeMap<String, K>,
    initialised: bool,
}

impl<K> Default for WatchedSet<K> {
    fn default() -> Self {
        WatchedSet {
            current: BTreeMap::new(),
            buffer: BTreeMap::new(),
            initialised: false,
        }
    }
}

fn key<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

impl<K: Resource> WatchedSet<K> {
    /// Folds one event in; whether the complete set changed.
    pub fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(o) => {
                self.current.insert(key(&o), o);
                true
            }
            watcher::Event::Delete(o) => self.current.remove(&key(&o)).is_some(),
            watcher::Event::Init => {
                self.buffer.clear();
                false
            }
            watcher::Event::InitApply(o) => {
                self.buffer.insert(key(&o), o);
                false
            }
            watcher::Event::InitDone => {
                self.current = std::mem::take(&mut self.buffer);
                self.initialised = true;
                true
            }
        }
    }

    pub fn objects(&self) -> impl Iterator<Item = &K> {
        self.current.values()
    }
}

/// Follows `stream` until it ends, calling `on_change` with the complete
/// set after the first listing and after every change (a burst of events
/// calls it once). Watch errors are logged and counted; the watcher retries.
pub async fn follow<K, S>(
    stream: S,
    what: &str,
    state: &State,
    mut on_change: impl FnMut(&WatchedSet<K>),
) where
    K: Resource,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    futures_util::pin_mut!(stream);
    let mut set = WatchedSet::default();
    let fold = |event, set: &mut WatchedSet<K>| match event {
        Ok(event) => set.apply(event),
        Err(e) => {
            tracing::warn!(error = %e, watching = what, "watch failed; retrying");
            state
                .metrics
                .policy_reloads
                .get_or_create(&ReloadLabels {
                    result: "watch_error",
                })
                .inc();
            false
        }
    };
    while let Some(event) = stream.next().await {
        let mut changed = fold(event, &mut set);
        while let Some(Some(event)) = stream.next().now_or_never() {
            changed |= fold(event, &mut set);
        }
        if changed && set.initialised {
            on_change(&set);
        }
    }
}
