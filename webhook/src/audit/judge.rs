//! Judging pages of existing objects on worker threads.
//!
//! An audit pass is CPU-bound (the policies), so pages are split over a
//! few long-lived threads: each keeps its clones of the compiled policies
//! for the whole pass (the engines are thread-local, see
//! `policy::evaluate`), where threads made per page would clone them again
//! for every page. Results come back in the page's order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use serde_json::json;

use super::Subject;
use crate::admission::{Admission, Audited};
use crate::review::{Request, create_request_for};
use crate::teams::Labels;

/// The labels of every namespace, by name, for `namespaceSelector`s and
/// team resolution.
pub type NamespaceLabels = Arc<HashMap<String, Labels>>;

/// One object's verdict: `Ok(None)` when it is exempt, `Err` when it could
/// not be made into a review (the cause).
pub type Verdict = Result<Option<Audited>, String>;

type Job = (
    Vec<serde_json::Value>,
    mpsc::Sender<Vec<(Subject, Verdict)>>,
);

/// Worker threads judging objects with one [`Admission`].
pub struct Judges {
    senders: Vec<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Judges {
    /// `workers` threads (at least one) judging with what `admission`
    /// holds, namespace labels from `namespaces`.
    pub fn start<A>(admission: Arc<A>, namespaces: NamespaceLabels, workers: usize) -> Judges
    where
        A: AsRef<Admission> + Send + Sync + 'static,
    {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for n in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel::<Job>();
            let admission = admission.clone();
            let namespaces = namespaces.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tollgate-audit-{n}"))
                .spawn(move || {
                    for (objects, reply) in rx {
                        let admission = (*admission).as_ref();
                        let verdicts = objects
                            .iter()
                            .map(|o| (Subject::of(o), judge(admission, &namespaces, o)))
                            .collect();
                        if reply.send(verdicts).is_err() {
                            return;
                        }
                    }
                });
            match spawned {
                Ok(thread) => {
                    senders.push(tx);
                    threads.push(thread);
                }
                // Fewer threads than asked still audit; none is handled in
                // `judge_page`.
                Err(e) => tracing::warn!(error = %e, "starting an audit thread"),
            }
        }
        Judges { senders, threads }
    }

    /// The verdicts on `objects`, in their order.
    pub fn judge_page(&self, mut objects: Vec<serde_json::Value>) -> Vec<(Subject, Verdict)> {
        if self.senders.is_empty() {
            let error = || Err("no audit thread could be started".to_owned());
            return objects.iter().map(|o| (Subject::of(o), error())).collect();
        }
        let share = objects.len().div_ceil(self.senders.len()).max(1);
        let mut replies = Vec::new();
        let mut rest = Vec::new();
        // Split from the back so each share keeps its order.
        let mut chunks = Vec::new();
        while objects.len() > share {
            chunks.push(objects.split_off(objects.len() - share));
        }
        chunks.push(objects);
        chunks.reverse();
        for (chunk, sender) in chunks.into_iter().zip(self.senders.iter().cycle()) {
            let (tx, rx) = mpsc::channel();
            let subjects: Vec<Subject> = chunk.iter().map(Subject::of).collect();
            match sender.send((chunk, tx)) {
                Ok(()) => replies.push((rx, subjects)),
                Err(_) => rest.push(subjects),
            }
        }
        let mut out = Vec::new();
        for (rx, subjects) in replies {
            match rx.recv() {
                Ok(verdicts) => out.extend(verdicts),
                Err(_) => out.extend(
                    subjects
                        .into_iter()
                        .map(|s| (s, Err("the audit thread stopped".to_owned()))),
                ),
            }
        }
        for subjects in rest {
            out.extend(
                subjects
                    .into_iter()
                    .map(|s| (s, Err("the audit thread stopped".to_owned()))),
            );
        }
        out
    }
}

impl Drop for Judges {
    fn drop(&mut self) {
        self.senders.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One object, as a CREATE review of itself.
fn judge(
    admission: &Admission,
    namespaces: &NamespaceLabels,
    object: &serde_json::Value,
) -> Verdict {
    let review = json!({
        "apiVersion": crate::review::API_VERSION,
        "kind": crate::review::KIND,
        "request": create_request_for(object),
    });
    let request = Request::decode(review.to_string().as_bytes()).map_err(|e| e.to_string())?;
    let labels = namespaces.get(&request.namespace);
    Ok(admission.audit(&request, labels))
}

impl AsRef<Admission> for Admission {
    fn as_ref(&self) -> &Admission {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn pod(namespace: &str, name: &str, privileged: bool) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
                "securityContext": {"privileged": privileged}}]}
        })
    }

    #[test]
    fn verdicts_come_back_in_order_from_several_threads() {
        let config = Config::default();
        let policies = crate::serve::load_policies(&config).expect("bundled policies");
        let admission = Arc::new(
            Admission::new(policies, &config, Arc::new(Metrics::new())).expect("admission"),
        );
        let judges = Judges::start(admission, Arc::new(HashMap::new()), 3);
        let objects: Vec<_> = (0..10)
            .map(|i| pod("app-ml-team", &format!("p{i}"), i % 3 == 0))
            .collect();
        let verdicts = judges.judge_page(objects);
        assert_eq!(verdicts.len(), 10);
        for (i, (subject, verdict)) in verdicts.iter().enumerate() {
            assert_eq!(subject.name, format!("p{i}"));
            let audited = verdict
                .as_ref()
                .expect("judged")
                .as_ref()
                .expect("not exempt");
            assert_eq!(audited.team.as_deref(), Some("ml"));
            let privileged = audited
                .outcome
                .findings
                .iter()
                .any(|f| f.message.to_lowercase().contains("privileged"));
            assert_eq!(
                privileged,
                i % 3 == 0,
                "pod p{i}: {:?}",
                audited.outcome.findings
            );
        }
    }
}
