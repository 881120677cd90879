//! Where entries and locks live: in this process (moka) or in Redis.

pub(crate) mod memory;
pub(crate) mod redis;

use std::time::Duration;

use crate::Error;
use crate::cache::CacheValue;
use crate::io;

pub(crate) use self::memory::MemoryBackend;
pub(crate) use self::redis::RedisBackend;

/// Longest TTL or lease handed to a backend (about 100 years): Redis
/// refuses expiry times that overflow, and nobody means more.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Shortest TTL or lease: Redis counts in milliseconds, so shorter
/// durations are rounded up to one millisecond.
const MIN_TTL: Duration = Duration::from_millis(1);

/// Rounds a TTL into the range every backend accepts.
pub(crate) fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.clamp(MIN_TTL, MAX_TTL)
}

/// The backend of one client. An enum rather than a trait object: two
/// known backends, static dispatch, no boxed futures on the hot path.
#[derive(Clone)]
pub(crate) enum Backend {
    Memory(MemoryBackend),
    Redis(RedisBackend),
}

impl Backend {
    /// Reads a cached value. A value that does not decode as `T` is reported
    /// as `Err(Error::Codec)` so the caller can treat it as a miss.
    pub(crate) async fn get<T: CacheValue>(&self, key: &str) -> Result<Option<T>, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.get(key)),
            Backend::Redis(redis) => redis.get(key).await,
        }
    }

    pub(crate) fn get_blocking<T: CacheValue>(&self, key: &str) -> Result<Option<T>, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.get(key)),
            Backend::Redis(redis) => {
                let connection = redis.clone();
                let key = key.to_owned();
                let bytes = io::block_on(async move { connection.get_bytes(&key).await })?;
                bytes.map(|bytes| redis.decode(&bytes)).transpose()
            }
        }
    }

    /// Stores a value; `Ok(false)` when it is over the size limit.
    pub(crate) async fn set<T: CacheValue>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        match self {
            Backend::Memory(memory) => {
                memory.set(key, value.clone(), ttl);
                Ok(true)
            }
            Backend::Redis(redis) => match redis.encode_within_limit(key, value)? {
                Some(bytes) => redis.set(key, bytes, ttl).await.map(|()| true),
                None => Ok(false),
            },
        }
    }

    pub(crate) fn set_blocking<T: CacheValue>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        match self {
            Backend::Memory(memory) => {
                memory.set(key, value.clone(), ttl);
                Ok(true)
            }
            Backend::Redis(redis) => match redis.encode_within_limit(key, value)? {
                Some(bytes) => {
                    let redis = redis.clone();
                    let key = key.to_owned();
                    io::block_on(async move { redis.set(&key, bytes, ttl).await }).map(|()| true)
                }
                None => Ok(false),
            },
        }
    }

    /// Deletes a cache entry or a lock, whoever owns it.
    pub(crate) async fn delete(&self, key: String) -> Result<(), Error> {
        match self {
            Backend::Memory(memory) => {
                memory.delete(&key);
                Ok(())
            }
            Backend::Redis(redis) => redis.delete(&key).await,
        }
    }

    pub(crate) fn delete_blocking(&self, key: String) -> Result<(), Error> {
        match self {
            Backend::Memory(memory) => {
                memory.delete(&key);
                Ok(())
            }
            Backend::Redis(redis) => {
                let redis = redis.clone();
                io::block_on(async move { redis.delete(&key).await })
            }
        }
    }

    /// Deletes every cache entry whose key starts with `prefix` (locks are
    /// never touched on the memory backend). Returns how many were deleted.
    #[cfg(feature = "axum")]
    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.delete_prefix(prefix)),
            Backend::Redis(redis) => redis.delete_prefix(prefix).await,
        }
    }

    /// The token of whoever holds a lock, to notice when it changes hands.
    pub(crate) async fn lock_holder(&self, key: &str) -> Result<Option<String>, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.lock_holder(key)),
            Backend::Redis(redis) => redis.lock_holder(key).await,
        }
    }

    pub(crate) fn lock_holder_blocking(&self, key: &str) -> Result<Option<String>, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.lock_holder(key)),
            Backend::Redis(redis) => {
                let redis = redis.clone();
                let key = key.to_owned();
                io::block_on(async move { redis.lock_holder(&key).await })
            }
        }
    }

    /// Whether a lock is currently held.
    pub(crate) async fn exists(&self, key: String) -> Result<bool, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.is_locked(&key)),
            Backend::Redis(redis) => redis.exists(&key).await,
        }
    }

    pub(crate) fn exists_blocking(&self, key: String) -> Result<bool, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.is_locked(&key)),
            Backend::Redis(redis) => {
                let redis = redis.clone();
                io::block_on(async move { redis.exists(&key).await })
            }
        }
    }

    /// Takes the lock if nobody holds it (`SET NX PX`), and draws the next
    /// fencing token of `fence_key` in the same atomic step.
    pub(crate) async fn try_lock(
        &self,
        key: &str,
        fence_key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<Option<u64>, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.try_lock(key, fence_key, token, lease)),
            Backend::Redis(redis) => redis.try_lock(key, fence_key, token, lease).await,
        }
    }

    /// Deletes the lock if `token` still owns it; false when it does not.
    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<bool, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.unlock(key, token)),
            Backend::Redis(redis) => redis.unlock(key, token).await,
        }
    }

    /// Renews the lease if `token` still owns the lock; false when it does not.
    pub(crate) async fn extend(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        match self {
            Backend::Memory(memory) => Ok(memory.extend(key, token, lease)),
            Backend::Redis(redis) => redis.extend(key, token, lease).await,
        }
    }
}
