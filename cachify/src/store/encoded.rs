//! The codec as an adapter: makes any [`ByteStore`] a [`ValueStore`].

use std::sync::Arc;
use std::time::Duration;

use super::{ByteStore, StoreFuture, ValueStore};
use crate::codec::Codec;
use crate::keyspace::KeyMatch;
use crate::value::{AnyValue, ValueType};

/// Encodes values with `codec` (or the codec their [`ValueType`] names) on
/// their way into a byte store, and refuses (with a warning) values over
/// `max_value_size`.
pub(crate) struct Encoded<B> {
    bytes: Arc<B>,
    codec: Codec,
    max_value_size: usize,
}

impl<B: ByteStore> Encoded<B> {
    pub(crate) fn new(bytes: Arc<B>, codec: Codec, max_value_size: usize) -> Self {
        Self {
            bytes,
            codec,
            max_value_size,
        }
    }
}

impl<B: ByteStore> ValueStore for Encoded<B> {
    fn get(&self, key: &str, kind: ValueType) -> StoreFuture<Option<AnyValue>> {
        let codec = self.codec;
        self.bytes.get(key).decode(move |bytes| match bytes {
            Some(bytes) => Ok(Some(kind.decode(codec, &bytes)?)),
            None => Ok(None),
        })
    }

    fn set(
        &self,
        key: &str,
        value: AnyValue,
        kind: ValueType,
        ttl: Option<Duration>,
    ) -> StoreFuture<bool> {
        let bytes = match kind.encode(&value, self.codec) {
            Ok(bytes) => bytes,
            Err(error) => return StoreFuture::ready(Err(error.into())),
        };
        if bytes.len() > self.max_value_size {
            tracing::warn!(
                key,
                size = bytes.len(),
                limit = self.max_value_size,
                "cachify: value over the size limit; returned but not stored"
            );
            return StoreFuture::ready(Ok(false));
        }
        self.bytes.set(key, bytes, ttl).map(|()| Ok(true))
    }

    fn delete(&self, key: &str) -> StoreFuture<()> {
        self.bytes.delete(key)
    }

    fn delete_prefix(&self, prefix: &str) -> StoreFuture<u64> {
        self.bytes.delete_prefix(prefix)
    }

    fn delete_matching(&self, matching: &KeyMatch) -> StoreFuture<u64> {
        self.bytes.delete_matching(matching)
    }

    fn get_encoded(
        &self,
        key: &str,
        kind: ValueType,
    ) -> Option<(StoreFuture<Option<Vec<u8>>>, Codec)> {
        Some((self.bytes.get(key), kind.codec(self.codec)))
    }
}
