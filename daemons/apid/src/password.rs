//! Argon2id password hashing under a fixed budget of CPU and memory.
//!
//! A password check costs 19 MiB and tens of milliseconds of CPU on purpose, which makes it
//! the cheapest way to exhaust apid: every failed login from anywhere is one. Before this
//! module each login ran Argon2 on its own blocking thread with its own 19 MiB allocation, so
//! a failed-login flood from 20 addresses took apid to 3.9 GB of RSS (3.6 GB still held
//! afterwards: glibc keeps freed arenas of hundreds of threads) and could fill tokio's blocking
//! pool, which the store's queries and the watchdog's health check also need.
//!
//! [`PasswordPool`] bounds both:
//! - **CPU**: at most one hash or verification per CPU at a time (a semaphore);
//! - **waiting**: at most [`QUEUE_PER_SLOT`] callers per slot wait, each at most
//!   [`MAX_WAIT`]; beyond that the caller gets [`Busy`] at once (the API answers 503 with
//!   `Retry-After`), never an unbounded queue;
//! - **memory**: each slot reuses one 19 MiB block buffer for its whole life
//!   (`hash_password_into_with_memory`), so a flood costs `slots × 19 MiB`, allocated once.
//!
//! It must never run Argon2 outside a slot, or hold a slot while waiting on anything else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

/// Callers allowed to wait, per slot, before the pool answers [`Busy`].
pub const QUEUE_PER_SLOT: usize = 8;
/// Longest a caller waits for a slot before it is told [`Busy`].
pub const MAX_WAIT: Duration = Duration::from_secs(3);
/// The largest `m_cost` (KiB) a stored hash may ask for: hashes made elsewhere with more
/// memory than this are refused rather than allocated for each attempt.
pub const MAX_M_COST_KIB: u32 = 64 * 1024;

/// Every slot is taken and the queue is full (or the wait ran out): retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every password slot is busy")]
pub struct Busy;

/// Why hashing failed (never a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error("argon2")]
    Argon2(#[source] argon2::Error),
    #[error("encoding the password hash")]
    Encoding(#[source] argon2::password_hash::phc::Error),
    #[error("encoding the password hash's parameters")]
    Params(#[source] argon2::password_hash::Error),
    #[error("the hashing thread failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Bounded Argon2id work: see the module documentation. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct PasswordPool {
    slots: Arc<Semaphore>,
    slot_count: usize,
    queue: usize,
    waiting: AtomicUsize,
    /// Idle block buffers, at most one per slot.
    buffers: Mutex<Vec<Vec<Block>>>,
}

impl PasswordPool {
    /// One slot per CPU apid may use.
    pub fn for_this_host() -> Arc<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Arc::new(Self::new(cpus, cpus * QUEUE_PER_SLOT))
    }

    /// `slots` concurrent hashes, `queue` callers waiting at most.
    pub fn new(slots: usize, queue: usize) -> Self {
        let slots = slots.max(1);
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            slot_count: slots,
            queue,
            waiting: AtomicUsize::new(0),
            buffers: Mutex::new(Vec::new()),
        }
    }

    /// Concurrent hashes allowed.
    pub fn slots(&self) -> usize {
        self.slot_count
    }

    /// Hashes a new password with Argon2id's default parameters and a random salt; returns
    /// the PHC string to store.
    pub async fn hash(self: &Arc<Self>, password: &str) -> Result<String, PasswordError> {
        let password = password.to_owned();
        self.run(move |pool| pool.hash_blocking(&password)).await?
    }

    /// Checks `password` against a stored PHC string. A malformed or unsupported hash never
    /// matches (and costs no Argon2 work).
    pub async fn verify(self: &Arc<Self>, password: &str, phc: &str) -> Result<bool, Busy> {
        let (password, phc) = (password.to_owned(), phc.to_owned());
        match self
            .run(move |pool| pool.verify_blocking(&password, &phc))
            .await
        {
            Ok(ok) => Ok(ok),
            Err(PasswordError::Busy(b)) => Err(b),
            Err(e) => {
                tracing::error!(error = %dragonfly_runtime::cli::Chain(&e), "password check failed");
                Ok(false)
            }
        }
    }

    /// Waits for a slot (bounded), then runs `f` on the blocking pool holding it.
    async fn run<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> R + Send + 'static,
    ) -> Result<R, PasswordError> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Join the queue only if there is room; the count is released on every path.
                let queued = self
                    .waiting
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                        (w < self.queue).then_some(w + 1)
                    });
                if queued.is_err() {
                    return Err(Busy.into());
                }
                let got =
                    tokio::time::timeout(MAX_WAIT, Arc::clone(&self.slots).acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match got {
                    Ok(Ok(p)) => p,
                    _ => return Err(Busy.into()),
                }
            }
        };
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&this)
        })
        .await
        .map_err(PasswordError::Worker)
    }

    /// A block buffer of `blocks` blocks: this slot's pooled one when the size is the
    /// default's, else a fresh one (dropped after use).
    fn with_blocks<R>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
        let pooled = blocks == Params::DEFAULT.block_count();
        let mut buf = if pooled {
            self.buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        buf.resize(blocks, Block::new());
        let out = f(&mut buf);
        if pooled {
            let mut idle = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.slot_count {
                idle.push(buf);
            }
        }
        out
    }

    fn hash_blocking(&self, password: &str) -> Result<String, PasswordError> {
        let params = Params::DEFAULT;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        self.with_blocks(params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
        })
        .map_err(PasswordError::Argon2)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(PasswordError::Params)?,
            salt: Some(Salt::new(&salt).map_err(PasswordError::Encoding)?),
            hash: Some(Output::new(&out).map_err(PasswordError::Encoding)?),
        };
        Ok(phc.to_string())
    }

    fn verify_blocking(&self, password: &str, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
            return false;
        };
        let Ok(version) = parsed.version.map_or(Ok(Version::V0x13), Version::try_from) else {
            return false;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        if params.m_cost() > MAX_M_COST_KIB {
            tracing::warn!(
                m_cost = params.m_cost(),
                "a stored password hash asks for more memory than apid allows"
            );
            return false;
        }
        let argon = Argon2::new(algorithm, version, params.clone());
        let mut out = vec![0u8; expected.len()];
        let hashed = self.with_blocks(params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        });
        // `Output`'s equality is constant-time.
        hashed.is_ok() && Output::new(&out).is_ok_and(|o| &o == expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher as _;

    #[tokio::test]
    async fn hashes_verify_only_their_password_and_interoperate() {
        let pool = Arc::new(PasswordPool::new(1, 1));
        let h = pool.hash("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(pool.verify("correct horse", &h).await.unwrap());
        assert!(!pool.verify("correct horsf", &h).await.unwrap());
        assert!(!pool.verify("x", "not a hash").await.unwrap());
        // Hashes made by the crate's own API (all existing accounts) verify here.
        let theirs = Argon2::default()
            .hash_password(b"battery staple")
            .unwrap()
            .to_string();
        assert!(pool.verify("battery staple", &theirs).await.unwrap());
        assert!(!pool.verify("battery stapler", &theirs).await.unwrap());
        // A hash asking for absurd memory is refused, not computed.
        let greedy = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$\
                      AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!pool.verify("x", greedy).await.unwrap());
    }

    #[tokio::test]
    async fn beyond_the_slots_and_queue_callers_are_told_busy_and_buffers_are_reused() {
        let pool = Arc::new(PasswordPool::new(1, 2));
        let h = pool.hash("correct horse").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let (pool, h) = (Arc::clone(&pool), h.clone());
            tasks.push(tokio::spawn(async move { pool.verify("wrong", &h).await }));
        }
        let mut busy = 0;
        let mut done = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(false) => done += 1,
                Err(Busy) => busy += 1,
                Ok(true) => panic!("a wrong password matched"),
            }
        }
        // One runs, two wait; the rest are refused at once rather than queued.
        assert!(done >= 3, "{done} checked");
        assert!(busy >= 1, "{busy} refused");
        assert_eq!(done + busy, 12);
        assert_eq!(pool.waiting.load(Ordering::Relaxed), 0);
        // One slot: at most one 19 MiB buffer was ever kept.
        assert_eq!(pool.buffers.lock().unwrap().len(), 1);
    }
}
