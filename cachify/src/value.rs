//! The value contract: what a cached value must be, and how stores see one
//! without knowing its type.

use std::any::Any;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::error::CodecError;

/// What a cached value must be: stored in Redis as bytes, kept in memory as
/// it is, and handed to concurrent callers as clones.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached: cached values must be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`",
    note = "derive `serde::Serialize`, `serde::Deserialize` and `Clone` for `{Self}`"
)]
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// A value as stores hold it: typed, behind an `Arc`. The memory store
/// keeps it as it is; byte stores encode it with its [`ValueType`].
///
/// A struct rather than an alias of `Arc<dyn Any>`: a trait object type
/// inside the futures of generic code makes rustc unable to prove those
/// futures `Send`.
#[derive(Clone)]
pub(crate) struct AnyValue(Arc<dyn Any + Send + Sync>);

impl AnyValue {
    pub(crate) fn new<T: CacheValue>(value: Arc<T>) -> Self {
        Self(value)
    }

    /// The value as an `Arc<T>` sharing this allocation, if it is a `T`.
    pub(crate) fn downcast_arc<T: CacheValue>(&self) -> Option<Arc<T>> {
        Arc::clone(&self.0).downcast().ok()
    }

    /// Whether both are the same allocation.
    pub(crate) fn same(&self, other: &AnyValue) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        &*self.0
    }
}

/// How to turn one value type into bytes and back: what a byte store needs
/// to know of a type it never names. Two function pointers, made per type
/// by [`ValueType::of`], and the codec its function asked for, if any.
#[derive(Clone, Copy)]
pub(crate) struct ValueType {
    encode: fn(&(dyn Any + Send + Sync), Codec) -> Result<Vec<u8>, CodecError>,
    decode: fn(Codec, &[u8]) -> Result<AnyValue, CodecError>,
    /// `codec = ..` on `#[cached]`: overrides the store's codec.
    codec: Option<Codec>,
}

impl ValueType {
    pub(crate) fn of<T: CacheValue>() -> Self {
        Self {
            encode: encode_as::<T>,
            decode: decode_as::<T>,
            codec: None,
        }
    }

    /// The same type, written and read with `codec` when it is `Some`
    /// instead of the store's codec.
    pub(crate) fn with_codec(self, codec: Option<Codec>) -> Self {
        Self { codec, ..self }
    }

    /// The codec for this value: its function's, else the store's `default`.
    pub(crate) fn codec(self, default: Codec) -> Codec {
        self.codec.unwrap_or(default)
    }

    /// Encodes with [`ValueType::codec`].
    pub(crate) fn encode(self, value: &AnyValue, default: Codec) -> Result<Vec<u8>, CodecError> {
        (self.encode)(value.as_any(), self.codec(default))
    }

    /// Decodes with [`ValueType::codec`].
    pub(crate) fn decode(self, default: Codec, bytes: &[u8]) -> Result<AnyValue, CodecError> {
        (self.decode)(self.codec(default), bytes)
    }
}

fn encode_as<T: CacheValue>(
    value: &(dyn Any + Send + Sync),
    codec: Codec,
) -> Result<Vec<u8>, CodecError> {
    match value.downcast_ref::<T>() {
        Some(value) => codec.encode(value),
        None => Err(CodecError::new(format_args!(
            "value is not a `{}`",
            std::any::type_name::<T>()
        ))),
    }
}

fn decode_as<T: CacheValue>(codec: Codec, bytes: &[u8]) -> Result<AnyValue, CodecError> {
    Ok(AnyValue::new(Arc::new(codec.decode::<T>(bytes)?)))
}

/// The `T` inside a stored value: `None` when it holds another type (two
/// functions sharing one key). Moves the value out when nobody else holds
/// it (a freshly decoded one), and clones it otherwise (a memory hit),
/// without a failed atomic exchange on the shared count.
pub(crate) fn take<T: CacheValue>(value: AnyValue) -> Option<T> {
    let value: Arc<T> = value.0.downcast().ok()?;
    if Arc::strong_count(&value) > 1 {
        return Some(T::clone(&value));
    }
    Some(Arc::try_unwrap(value).unwrap_or_else(|shared| T::clone(&shared)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_type_round_trips_and_refuses_other_types() {
        let kind = ValueType::of::<Vec<u32>>();
        let bytes = kind
            .encode(&AnyValue::new(Arc::new(vec![1_u32, 2])), Codec::MessagePack)
            .unwrap();
        let back = kind.decode(Codec::MessagePack, &bytes).unwrap();
        assert_eq!(take::<Vec<u32>>(back), Some(vec![1, 2]));
        let text = AnyValue::new(Arc::new("text".to_owned()));
        assert!(kind.encode(&text, Codec::MessagePack).is_err());
        assert_eq!(take::<u8>(text), None);
    }

    #[cfg(feature = "json")]
    #[test]
    fn a_function_codec_overrides_the_store_codec() {
        let kind = ValueType::of::<u32>().with_codec(Some(Codec::Json));
        let bytes = kind
            .encode(&AnyValue::new(Arc::new(7_u32)), Codec::MessagePack)
            .unwrap();
        assert_eq!(bytes, b"J7");
        assert_eq!(
            take::<u32>(kind.decode(Codec::MessagePack, &bytes).unwrap()),
            Some(7)
        );
        let store_codec = ValueType::of::<u32>();
        assert!(store_codec.decode(Codec::MessagePack, &bytes).is_err());
        assert_eq!(kind.codec(Codec::MessagePack), Codec::Json);
        assert_eq!(store_codec.codec(Codec::MessagePack), Codec::MessagePack);
    }
}
