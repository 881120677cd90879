//! The near cache: decoded copies of Redis entries kept in this process,
//! in front of a Redis-speaking store, and dropped whenever Redis says
//! their key changed (see [`super::tracking`] for how, and for what keeps
//! a copy from ever being stale for longer than an invalidation takes to
//! arrive).

use std::sync::Arc;
use std::time::Duration;

use quanta::Instant;

use super::protocol::{Link, read_with_ttl};
use super::tracking::Tracking;
use super::{Encoded, Local, StoreFuture, ValueStore};
use crate::codec::Codec;
use crate::keyspace::KeyMatch;
use crate::value::{AnyValue, ValueType};

/// A [`ValueStore`] over Redis that answers repeated reads from process
/// memory.
pub(crate) struct NearStore<L> {
    link: Arc<L>,
    encoded: Encoded<L>,
    codec: Codec,
    tracking: Arc<Tracking>,
}

impl<L: Link> NearStore<L> {
    pub(crate) fn new(
        link: Arc<L>,
        codec: Codec,
        max_value_size: usize,
        tracking: Arc<Tracking>,
    ) -> Self {
        Self {
            encoded: Encoded::new(Arc::clone(&link), codec, max_value_size),
            link,
            codec,
            tracking,
        }
    }
}

impl<L: Link> ValueStore for NearStore<L> {
    fn get(&self, key: &str, kind: ValueType) -> StoreFuture<Option<AnyValue>> {
        if let Some(copy) = self.tracking.get(key) {
            return StoreFuture::ready(Ok(Some(copy)));
        }
        if !self.tracking.is_up() {
            // Nothing may be kept while Redis could change keys unseen.
            return self.encoded.get(key, kind);
        }
        let ticket = self.tracking.begin();
        let started = Instant::now();
        let read = read_with_ttl(&*self.link, key);
        let (tracking, key, codec) = (Arc::clone(&self.tracking), key.to_owned(), self.codec);
        // Decoded where the I/O ran: the copy is kept decoded, for every
        // later reader, so there is no caller's thread to save it for.
        StoreFuture::io(async move {
            let (bytes, ttl) = read.await?;
            let Some(bytes) = bytes else {
                return Ok(None);
            };
            let value = kind.decode(codec, &bytes)?;
            let expires = ttl.map(|ttl: Duration| started + ttl);
            tracking.install(&key, &value, ticket, expires);
            Ok(Some(value))
        })
    }

    fn set(
        &self,
        key: &str,
        value: AnyValue,
        kind: ValueType,
        ttl: Option<Duration>,
    ) -> StoreFuture<bool> {
        // Forgotten first, so no read under way installs what this replaces.
        self.tracking.forget(key);
        self.encoded.set(key, value, kind, ttl)
    }

    fn delete(&self, key: &str) -> StoreFuture<()> {
        self.tracking.forget(key);
        self.encoded.delete(key)
    }

    fn delete_prefix(&self, prefix: &str) -> StoreFuture<u64> {
        self.tracking.forget_prefix(prefix);
        self.encoded.delete_prefix(prefix)
    }

    fn delete_matching(&self, matching: &KeyMatch) -> StoreFuture<u64> {
        // Every copy under the start goes: more than the template's, which
        // only costs those keys a read from Redis.
        self.tracking.forget_prefix(&matching.start);
        self.encoded.delete_matching(matching)
    }

    fn local(&self) -> Option<Local<'_>> {
        self.tracking.is_up().then(|| Local {
            values: self.tracking.copies(),
            near: true,
        })
    }
}
