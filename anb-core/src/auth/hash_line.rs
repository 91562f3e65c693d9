//! The line for the password-hashing slots: who may wait, and who goes next.
//!
//! A client (the address a request came from) may hold a bounded number of
//! places, waiting or hashing; the line as a whole holds a bounded number of
//! waiters; and a freed slot goes to the clients that wait in turn, one
//! hash each, rather than to the oldest waiter. A client that floods the
//! line therefore fills only its own share of it, and everyone else's wait
//! grows by at most one of its hashes per slot.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// How long the line for the hashing slots may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineLimits {
    /// Callers that may wait for a slot, all clients together.
    pub queue: usize,
    /// Places (waiting or hashing) one client may hold; `None`: no bound.
    pub per_client: Option<NonZeroUsize>,
}

/// Why a caller was not let into the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The client already holds as many places as it may.
    Client,
    /// Every slot is busy and the line is full.
    Full,
}

#[derive(Debug)]
pub(super) struct HashLine {
    slots: usize,
    limits: LineLimits,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Slots nobody holds; never above zero while anyone waits.
    free: usize,
    /// Callers waiting, all clients together.
    waiting: usize,
    /// The clients that hold a place, each with its waiters in arrival order.
    clients: HashMap<IpAddr, Client>,
    /// The clients that have a waiter, each once: the front one gets the
    /// next free slot and, if it has more waiters, goes to the back.
    turns: VecDeque<IpAddr>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Client {
    /// Places held: waiting, or holding a slot.
    held: usize,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    wake: oneshot::Sender<()>,
}

impl HashLine {
    pub(super) fn new(slots: NonZeroUsize, limits: LineLimits) -> Self {
        Self {
            slots: slots.get(),
            limits,
            state: Mutex::new(State {
                free: slots.get(),
                waiting: 0,
                clients: HashMap::new(),
                turns: VecDeque::new(),
                next_id: 0,
            }),
        }
    }

    pub(super) fn slots(&self) -> usize {
        self.slots
    }

    pub(super) fn waiting(&self) -> usize {
        self.state().waiting
    }

    pub(super) fn busy_slots(&self) -> usize {
        self.slots - self.state().free
    }

    /// Places `client` holds now.
    pub(super) fn held_by(&self, client: IpAddr) -> usize {
        self.state().clients.get(&client).map_or(0, |c| c.held)
    }

    /// Waits for a slot for `client`, or refuses at once: the client holds
    /// as many places as it may, or every slot is busy and the line is
    /// full. The slot is held until the [`Turn`] is dropped; a caller that
    /// stops waiting gives its place up.
    pub(super) async fn enter(self: &Arc<Self>, client: IpAddr) -> Result<Turn, Refusal> {
        let (wake, woken) = oneshot::channel();
        let id = {
            let mut guard = self.state();
            let state = &mut *guard;
            let held = state.clients.get(&client).map_or(0, |c| c.held);
            if self.limits.per_client.is_some_and(|max| held >= max.get()) {
                return Err(Refusal::Client);
            }
            if state.free > 0 {
                state.free -= 1;
                state.clients.entry(client).or_default().held += 1;
                return Ok(Turn {
                    line: Arc::clone(self),
                    client,
                    waiting: None,
                });
            }
            if state.waiting >= self.limits.queue {
                return Err(Refusal::Full);
            }
            let id = state.next_id;
            state.next_id += 1;
            let entry = state.clients.entry(client).or_default();
            if entry.waiters.is_empty() {
                state.turns.push_back(client);
            }
            entry.held += 1;
            entry.waiters.push_back(Waiter { id, wake });
            state.waiting += 1;
            id
        };
        // Should the caller stop waiting, dropping this takes the waiter out
        // of the line or, if a slot was handed to it meanwhile, hands the
        // slot on.
        let mut turn = Turn {
            line: Arc::clone(self),
            client,
            waiting: Some(id),
        };
        // The sender goes only with a slot handed over (`hand_on`), or with
        // this very `Turn`.
        let _ = woken.await;
        turn.waiting = None;
        Ok(turn)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; the counts stay coherent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Gives a slot that was just freed to the next client in turn, or
    /// keeps it free if nobody waits.
    fn hand_on(&mut self) {
        let Some(client) = self.turns.pop_front() else {
            self.free += 1;
            return;
        };
        let entry = self
            .clients
            .get_mut(&client)
            .expect("a client in turn holds a place");
        let waiter = entry
            .waiters
            .pop_front()
            .expect("a client in turn has a waiter");
        if !entry.waiters.is_empty() {
            self.turns.push_back(client);
        }
        self.waiting -= 1;
        // The slot is the waiter's from now on, whether or not it still
        // listens: if it stopped waiting, its `Turn`, no longer finding it
        // in the line, hands the slot on.
        let _ = waiter.wake.send(());
    }

    /// Takes waiter `id` of `client` out of the line; false if it is not in
    /// it any more (a slot was handed to it).
    fn leave(&mut self, client: IpAddr, id: u64) -> bool {
        let Some(entry) = self.clients.get_mut(&client) else {
            return false;
        };
        let Some(at) = entry.waiters.iter().position(|w| w.id == id) else {
            return false;
        };
        entry.waiters.remove(at);
        if entry.waiters.is_empty() {
            self.turns.retain(|c| *c != client);
        }
        self.waiting -= 1;
        true
    }

    /// Gives up one place of `client`, forgetting the client once it holds
    /// none (so memory follows the clients in the line, not all clients).
    fn release(&mut self, client: IpAddr) {
        if let Some(entry) = self.clients.get_mut(&client) {
            entry.held -= 1;
            if entry.held == 0 {
                self.clients.remove(&client);
            }
        }
    }
}

/// A client's place in the line, and a slot once [`HashLine::enter`]
/// returns it. Dropping it frees the place and hands the slot to the next
/// client in turn.
#[derive(Debug)]
pub(super) struct Turn {
    line: Arc<HashLine>,
    client: IpAddr,
    /// Still waiting, or handed a slot it has not taken yet.
    waiting: Option<u64>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = self.line.state();
        let was_in_line = self.waiting.is_some_and(|id| state.leave(self.client, id));
        state.release(self.client);
        if !was_in_line {
            state.hand_on();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn line(slots: usize, queue: usize, per_client: usize) -> Arc<HashLine> {
        Arc::new(HashLine::new(
            NonZeroUsize::new(slots).unwrap(),
            LineLimits {
                queue,
                per_client: NonZeroUsize::new(per_client),
            },
        ))
    }

    /// `line.enter(client)` on a task of its own.
    fn entering(
        line: &Arc<HashLine>,
        client: IpAddr,
    ) -> tokio::task::JoinHandle<Result<Turn, Refusal>> {
        let line = Arc::clone(line);
        tokio::spawn(async move { line.enter(client).await })
    }

    async fn until(what: impl Fn() -> bool) {
        while !what() {
            tokio::task::yield_now().await;
        }
    }

    /// Polls `future` once: its output if it was ready.
    async fn poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut future).poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn a_client_beyond_its_places_is_refused_and_others_are_not() {
        let line = line(1, usize::MAX, 2);
        let running = line.enter(ip(1)).await.unwrap();
        let waiting = entering(&line, ip(1));
        until(|| line.waiting() == 1).await;
        assert_eq!(line.held_by(ip(1)), 2);
        assert_eq!(line.enter(ip(1)).await.unwrap_err(), Refusal::Client);
        // Another client still gets into the line.
        let other = entering(&line, ip(2));
        until(|| line.waiting() == 2).await;
        drop(running);
        drop(waiting.await.unwrap().unwrap());
        drop(other.await.unwrap().unwrap());
        assert_eq!(line.waiting(), 0);
        assert_eq!(line.busy_slots(), 0);
        assert!(line.state().clients.is_empty());
        // Its places given back, the client gets in again.
        drop(line.enter(ip(1)).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_line_is_refused_whoever_asks() {
        let line = line(1, 1, 0);
        let _running = line.enter(ip(1)).await.unwrap();
        let _waiting = entering(&line, ip(2));
        until(|| line.waiting() == 1).await;
        assert_eq!(line.enter(ip(3)).await.unwrap_err(), Refusal::Full);
    }

    #[tokio::test]
    async fn free_slots_go_round_the_waiting_clients_not_first_come() {
        let line = line(1, usize::MAX, 0);
        let running = line.enter(ip(1)).await.unwrap();
        // Client 1 queues five, then clients 2 and 3 one each.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut entries = Vec::new();
        for client in [1, 1, 1, 1, 1, 2, 3] {
            let (line_, order) = (Arc::clone(&line), Arc::clone(&order));
            entries.push(tokio::spawn(async move {
                let turn = line_.enter(ip(client)).await.unwrap();
                order.lock().unwrap().push(client);
                drop(turn);
            }));
            let queued = entries.len();
            until(|| line.waiting() == queued).await;
        }
        drop(running);
        for entry in entries {
            entry.await.unwrap();
        }
        // One of client 1's, then 2's and 3's, then the rest of client 1's.
        assert_eq!(*order.lock().unwrap(), [1, 2, 3, 1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn a_waiter_that_stops_waiting_gives_its_place_up() {
        let line = line(1, usize::MAX, 1);
        let running = line.enter(ip(1)).await.unwrap();
        let gives_up = entering(&line, ip(2));
        until(|| line.waiting() == 1).await;
        gives_up.abort();
        let _ = gives_up.await;
        assert_eq!(line.waiting(), 0);
        assert_eq!(line.held_by(ip(2)), 0);
        assert!(line.state().turns.is_empty());
        drop(running);
        assert_eq!(line.busy_slots(), 0);
        drop(line.enter(ip(2)).await.unwrap());
    }

    #[tokio::test]
    async fn a_slot_handed_to_a_waiter_that_left_goes_on_to_the_next() {
        let line = line(1, usize::MAX, 0);
        let running = line.enter(ip(1)).await.unwrap();
        // In the line, and never polled again once its slot is handed over.
        let mut first = Box::pin(line.enter(ip(2)));
        assert!(poll_once(first.as_mut()).await.is_none());
        let second = entering(&line, ip(3));
        until(|| line.waiting() == 2).await;
        drop(running);
        assert_eq!(line.waiting(), 1);
        drop(first);
        // The slot went on to the next client.
        drop(second.await.unwrap().unwrap());
        assert_eq!(line.busy_slots(), 0);
        assert_eq!(line.waiting(), 0);
        assert!(line.state().clients.is_empty());
    }
}
