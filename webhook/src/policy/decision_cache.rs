//! A bounded cache of policy outcomes, for reviews that repeat: an ArgoCD
//! re-sync re-sends every unchanged object, and each would cost a fresh
//! evaluation.
//!
//! The key is a SHA-256 over everything an evaluation reads: the policy
//! set's generation, the request kind, the whole AdmissionRequest but its
//! `uid` (object, old object, operation, requester and groups, dry run…),
//! what the policies see of the namespace (`input.namespace`: labels and
//! Pod Security levels) and the namespace labels the constraints' selectors
//! match. Two requests with the same key are the same evaluation, so the
//! cache never answers for an object it has not evaluated with the current
//! set; a new set (a reload, an inventory change) has a new generation, and
//! replacing the set also empties the cache. A set whose policies read the
//! clock, randomness or the network is never cached
//! ([`super::PolicySet::cacheable`]).

use std::io::Write;
use std::sync::Arc;

use regorus::Value;
use ring::digest;

use super::Outcome;
use crate::teams::Labels;

pub type Key = [u8; 32];

pub struct DecisionCache {
    /// `None`: caching is off (capacity 0).
    entries: Option<quick_cache::sync::Cache<Key, Arc<Outcome>>>,
}

impl DecisionCache {
    /// A cache of at most `capacity` outcomes; 0 turns it off.
    pub fn new(capacity: usize) -> DecisionCache {
        DecisionCache {
            entries: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Outcome>> {
        self.entries.as_ref()?.get(key)
    }

    pub fn insert(&self, key: Key, outcome: Arc<Outcome>) {
        if let Some(entries) = &self.entries {
            entries.insert(key, outcome);
        }
    }

    pub fn clear(&self) {
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of one evaluation (see the module's documentation). `None`
    /// when a part cannot be encoded, which is then evaluated uncached.
    pub fn key(
        generation: u64,
        kind: &str,
        review: &Value,
        namespace: &Value,
        labels: Option<&Labels>,
    ) -> Option<Key> {
        let mut hasher = Hasher(digest::Context::new(&digest::SHA256));
        // One JSON array: every part is self-delimiting, so no two
        // different sequences of parts encode alike.
        write!(hasher, "[{generation},").ok()?;
        serde_json::to_writer(&mut hasher, kind).ok()?;
        hasher.write_all(b",{").ok()?;
        let Value::Object(fields) = review else {
            return None;
        };
        for (name, value) in fields.iter() {
            if name.as_string().is_ok_and(|n| n.as_ref() == "uid") {
                continue;
            }
            serde_json::to_writer(&mut hasher, name).ok()?;
            hasher.write_all(b":").ok()?;
            serde_json::to_writer(&mut hasher, value).ok()?;
            hasher.write_all(b",").ok()?;
        }
        hasher.write_all(b"},").ok()?;
        match namespace {
            Value::Undefined => hasher.write_all(b"null").ok()?,
            value => serde_json::to_writer(&mut hasher, value).ok()?,
        }
        hasher.write_all(b",").ok()?;
        serde_json::to_writer(&mut hasher, &labels).ok()?;
        hasher.write_all(b"]").ok()?;
        hasher.0.finish().as_ref().try_into().ok()
    }
}

/// Feeds what is written into the digest.
struct Hasher(digest::Context);

impl Write for Hasher {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(json: serde_json::Value) -> Value {
        Value::from_json_str(&json.to_string()).unwrap()
    }

    fn key(review_json: serde_json::Value, namespace: &Value, labels: Option<&Labels>) -> Key {
        DecisionCache::key(1, "Pod", &review(review_json), namespace, labels).unwrap()
    }

    #[test]
    fn the_uid_is_the_only_part_of_a_review_left_out() {
        let base = serde_json::json!({
            "uid": "a", "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["ml"]},
            "object": {"metadata": {"name": "p"}},
        });
        let mut other_uid = base.clone();
        other_uid["uid"] = "b".into();
        let none = Value::Undefined;
        assert_eq!(key(base.clone(), &none, None), key(other_uid, &none, None));
        for (pointer, value) in [
            ("/operation", serde_json::json!("UPDATE")),
            ("/userInfo/groups", serde_json::json!(["ml", "admins"])),
            ("/userInfo/username", serde_json::json!("bob")),
            ("/object/metadata/name", serde_json::json!("q")),
        ] {
            let mut changed = base.clone();
            *changed.pointer_mut(pointer).unwrap() = value;
            assert_ne!(
                key(base.clone(), &none, None),
                key(changed, &none, None),
                "{pointer} must be part of the key"
            );
        }
    }

    #[test]
    fn namespace_labels_generation_and_kind_are_part_of_the_key() {
        let r = review(serde_json::json!({"object": {}}));
        let ml = Labels::from([("team".to_owned(), "ml".to_owned())]);
        let data = Labels::from([("team".to_owned(), "data".to_owned())]);
        let ns = |team: &str| review(serde_json::json!({"labels": {"team": team}}));
        let k = |g, kind, ns: &Value, labels| DecisionCache::key(g, kind, &r, ns, labels);
        let base = k(1, "Pod", &ns("ml"), Some(&ml));
        assert_ne!(base, k(2, "Pod", &ns("ml"), Some(&ml)));
        assert_ne!(base, k(1, "Deployment", &ns("ml"), Some(&ml)));
        assert_ne!(base, k(1, "Pod", &ns("data"), Some(&ml)));
        assert_ne!(base, k(1, "Pod", &ns("ml"), Some(&data)));
        assert_ne!(base, k(1, "Pod", &ns("ml"), None));
        assert_eq!(base, k(1, "Pod", &ns("ml"), Some(&ml)));
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = DecisionCache::new(0);
        cache.insert([0; 32], Arc::new(Outcome::default()));
        assert!(cache.get(&[0; 32]).is_none());
        assert!(!cache.is_enabled());
    }
}
