//! Unit tests of the generic pool with an in-memory connection type.

use super::*;
use std::sync::atomic::AtomicU32;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

#[derive(Default)]
struct Counter {
    opened: AtomicU32,
    refuse: AtomicBool,
}

struct Conn {
    id: u32,
    clean: bool,
    alive: bool,
    resettable: bool,
}

impl Poolable for Conn {
    fn is_clean(&self) -> bool {
        self.clean
    }
    fn is_alive(&mut self) -> bool {
        self.alive
    }
    async fn reset(&mut self) -> bool {
        if self.resettable {
            self.clean = true;
        }
        self.resettable
    }
}

impl Connect for Arc<Counter> {
    type Conn = Conn;
    type Error = Refused;
    async fn connect(&self) -> Result<Conn, Refused> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Refused);
        }
        let id = self.opened.fetch_add(1, Ordering::SeqCst);
        Ok(Conn { id, clean: true, alive: true, resettable: true })
    }
}

fn pool(size: usize) -> (Pool<Arc<Counter>>, Arc<Counter>) {
    let c = Arc::new(Counter::default());
    let settings = PoolSettings { size, wait_timeout: Some(Duration::from_millis(200)), ..Default::default() };
    (Pool::new(c.clone(), settings), c)
}

#[tokio::test]
async fn a_returned_connection_is_reused() {
    let (p, c) = pool(2);
    let a = p.checkout().await.unwrap();
    let id = a.id;
    drop(a);
    let b = p.checkout().await.unwrap();
    assert_eq!(b.id, id);
    assert_eq!(c.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn waiters_beyond_the_size_time_out() {
    let (p, _) = pool(1);
    let _held = p.checkout().await.unwrap();
    let err = p.checkout().await.err().unwrap();
    assert!(matches!(err, PoolError::WaitTimeout(_)));
    assert_eq!(p.state().waiting, 0);
}

#[tokio::test]
async fn max_waiting_rejects_at_once() {
    let c = Arc::new(Counter::default());
    let p = Pool::new(c, PoolSettings { size: 1, max_waiting: 1, wait_timeout: None, ..Default::default() });
    let held = p.checkout().await.unwrap();
    let p2 = p.clone();
    let waiter = tokio::spawn(async move { p2.checkout().await.map(|c| c.id) });
    while p.state().waiting == 0 {
        tokio::task::yield_now().await;
    }
    assert!(matches!(p.checkout().await.err().unwrap(), PoolError::TooManyWaiting(1)));
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), 0);
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    let (p, _) = pool(1);
    let p = {
        p.reconfigure(PoolSettings { size: 1, wait_timeout: None, ..Default::default() });
        p
    };
    let held = p.checkout().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = vec![];
    for i in 0..5 {
        let (p2, order) = (p.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let c = p2.checkout().await.unwrap();
            order.lock().unwrap().push(i);
            drop(c);
        }));
        while p.state().waiting <= i {
            tokio::task::yield_now().await;
        }
    }
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_dead_idle_connection_is_skipped() {
    let (p, c) = pool(2);
    let mut a = p.checkout().await.unwrap();
    a.alive = false;
    drop(a);
    let b = p.checkout().await.unwrap();
    assert_eq!(b.id, 1);
    assert_eq!(c.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_dirty_connection_is_reset_before_reuse_and_holds_its_slot_meanwhile() {
    let (p, c) = pool(1);
    let mut a = p.checkout().await.unwrap();
    a.clean = false;
    drop(a);
    let b = p.checkout().await.unwrap();
    assert_eq!(b.id, 0, "reset connection reused");
    assert!(b.clean);
    assert_eq!(c.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_that_cannot_be_reset_is_closed() {
    let (p, c) = pool(1);
    let mut a = p.checkout().await.unwrap();
    a.clean = false;
    a.resettable = false;
    drop(a);
    let b = p.checkout().await.unwrap();
    assert_eq!(b.id, 1);
    assert_eq!(c.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_errors_release_the_slot() {
    let (p, c) = pool(1);
    c.refuse.store(true, Ordering::SeqCst);
    assert!(matches!(p.checkout().await.err().unwrap(), PoolError::Connect(_)));
    c.refuse.store(false, Ordering::SeqCst);
    assert!(p.checkout().await.is_ok());
}

#[tokio::test]
async fn maintain_opens_min_size_and_closes_expired() {
    let c = Arc::new(Counter::default());
    let p = Pool::new(c.clone(), PoolSettings { size: 4, min_size: 2, ..Default::default() });
    p.maintain().await;
    assert_eq!(p.state().idle, 2);
    p.reconfigure(PoolSettings { size: 4, min_size: 0, idle_timeout: Some(Duration::ZERO), ..Default::default() });
    p.maintain().await;
    assert_eq!(p.state().idle, 0);
}

#[tokio::test]
async fn shrinking_the_size_takes_effect() {
    let (p, _) = pool(3);
    p.reconfigure(PoolSettings { size: 1, wait_timeout: Some(Duration::from_millis(100)), ..Default::default() });
    tokio::task::yield_now().await;
    let _a = p.checkout().await.unwrap();
    assert!(p.checkout().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn failed_logins_back_off_exponentially_and_a_success_resets_it() {
    let c = Arc::new(Counter::default());
    let p = Pool::new(c.clone(), PoolSettings { size: 4, wait_timeout: None, ..Default::default() });
    c.refuse.store(true, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    assert!(p.checkout().await.is_err(), "first try at once");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(p.checkout().await.is_err());
    let near = |d: Duration, want: Duration| d >= want && d < want + Duration::from_millis(5);
    assert!(near(start.elapsed(), settings::LOGIN_BACKOFF_START), "the second waits the first backoff");
    assert!(p.checkout().await.is_err());
    assert!(near(start.elapsed(), settings::LOGIN_BACKOFF_START * 3), "then twice as long: {:?}", start.elapsed());
    c.refuse.store(false, Ordering::SeqCst);
    let ok = p.checkout().await.expect("the server is back");
    let after = tokio::time::Instant::now();
    drop(ok);
    drop(p.checkout().await.unwrap());
    let fresh = p.checkout().await.unwrap();
    let other = p.checkout().await.unwrap();
    assert_eq!(tokio::time::Instant::now(), after, "no backoff after a success");
    drop((fresh, other));
}

/// Opens that never finish until released, to count logins in flight.
struct SlowConnector {
    in_flight: AtomicU32,
    most: AtomicU32,
    gate: tokio::sync::Semaphore,
}

impl Connect for Arc<SlowConnector> {
    type Conn = Conn;
    type Error = Refused;
    async fn connect(&self) -> Result<Conn, Refused> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let _ = self.gate.acquire().await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(Conn { id: now, clean: true, alive: true, resettable: true })
    }
}

#[tokio::test]
async fn logins_in_flight_are_capped() {
    let c = Arc::new(SlowConnector { in_flight: AtomicU32::new(0), most: AtomicU32::new(0), gate: tokio::sync::Semaphore::new(0) });
    let p = Pool::new(c.clone(), PoolSettings { size: 10, max_logins: 3, wait_timeout: None, ..Default::default() });
    let tasks: Vec<_> = (0..10).map(|_| {
        let p = p.clone();
        tokio::spawn(async move { p.checkout().await.map(|_| ()).is_ok() })
    }).collect();
    while c.in_flight.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(c.most.load(Ordering::SeqCst), 3);
    c.gate.add_permits(100);
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(c.most.load(Ordering::SeqCst), 3);
}
