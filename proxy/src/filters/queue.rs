//! Shared queues (`proxy_{register,resolve,enqueue,dequeue}_shared_queue`):
//! one set per process, named by `vm_id` and queue name as in Envoy, each
//! bounded by `maxQueueDepth` items. A queue belongs to the filter whose
//! root context registered it; that filter's ticking root context gets
//! `proxy_on_queue_ready` before its next tick when items arrived since.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::abi::Status;

pub const DEFAULT_MAX_DEPTH: usize = 1024;

struct Queue {
    owner: String,
    items: VecDeque<Vec<u8>>,
    /// Items arrived since the owner was last told.
    ready: bool,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next: u32,
}

/// Every shared queue of the process.
#[derive(Default)]
pub struct SharedQueues {
    inner: Mutex<Queues>,
}

/// Why an enqueue failed.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueError {
    NotFound,
    /// The queue holds `maxQueueDepth` items already.
    Full,
}

impl SharedQueues {
    /// Registers (or finds) `owner`'s queue `name` under `vm_id`.
    pub fn register(&self, vm_id: &str, name: &str, owner: &str) -> Option<u32> {
        let mut q = self.inner.lock().ok()?;
        let key = (vm_id.to_owned(), name.to_owned());
        if let Some(id) = q.by_name.get(&key) {
            return Some(*id);
        }
        q.next = q.next.checked_add(1)?;
        let id = q.next;
        q.by_name.insert(key, id);
        q.queues.insert(
            id,
            Queue {
                owner: owner.to_owned(),
                items: VecDeque::new(),
                ready: false,
            },
        );
        Some(id)
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        let q = self.inner.lock().ok()?;
        q.by_name.get(&(vm_id.to_owned(), name.to_owned())).copied()
    }

    pub fn enqueue(&self, id: u32, value: Vec<u8>, max_depth: usize) -> Result<(), EnqueueError> {
        let mut q = self.inner.lock().map_err(|_| EnqueueError::NotFound)?;
        let queue = q.queues.get_mut(&id).ok_or(EnqueueError::NotFound)?;
        if queue.items.len() >= max_depth {
            return Err(EnqueueError::Full);
        }
        queue.items.push_back(value);
        queue.ready = true;
        Ok(())
    }

    /// `Err(NOT_FOUND)` for no such queue, `Err(EMPTY)` for an empty one.
    pub fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut q = self.inner.lock().map_err(|_| Status::InternalFailure)?;
        let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }

    /// The queues of `owner` that received items since it was last told
    /// (and marks them told).
    pub fn take_ready(&self, owner: &str) -> Vec<u32> {
        let Ok(mut q) = self.inner.lock() else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = q
            .queues
            .iter_mut()
            .filter(|(_, queue)| queue.owner == owner && queue.ready)
            .map(|(id, queue)| {
                queue.ready = false;
                *id
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_named_by_vm_id_bounded_and_owned() {
        let queues = SharedQueues::default();
        let id = queues.register("vm", "logs", "logger").unwrap();
        assert_eq!(queues.register("vm", "logs", "logger"), Some(id));
        assert_eq!(queues.resolve("vm", "logs"), Some(id));
        assert_eq!(queues.resolve("other-vm", "logs"), None);
        assert_eq!(queues.dequeue(id), Err(Status::Empty));
        queues.enqueue(id, b"a".to_vec(), 2).unwrap();
        queues.enqueue(id, b"b".to_vec(), 2).unwrap();
        assert_eq!(
            queues.enqueue(id, b"c".to_vec(), 2),
            Err(EnqueueError::Full)
        );
        assert_eq!(
            queues.enqueue(99, b"c".to_vec(), 2),
            Err(EnqueueError::NotFound)
        );
        assert_eq!(queues.take_ready("someone-else"), Vec::<u32>::new());
        assert_eq!(queues.take_ready("logger"), vec![id]);
        assert_eq!(queues.take_ready("logger"), Vec::<u32>::new(), "told once");
        assert_eq!(queues.dequeue(id).unwrap(), b"a");
        assert_eq!(queues.dequeue(id).unwrap(), b"b");
        assert_eq!(queues.dequeue(99), Err(Status::NotFound));
    }
}
