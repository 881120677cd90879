//! How values are turned into bytes for the Redis backend.
//!
//! Every stored value starts with one byte naming its codec, so a value
//! written with another codec (or by hand with `redis-cli SET`) is a miss,
//! never a wrong answer decoded by the wrong format.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// The format of values stored in Redis. The memory backend stores values
/// as they are and does not encode them. A client has one
/// ([`CachifyBuilder::codec`](crate::CachifyBuilder::codec)); a `#[cached]`
/// function may name its own with `codec = Codec::Json`.
///
/// ```
/// use cachify::{Cachify, Codec};
///
/// let client = Cachify::builder().memory().codec(Codec::MessagePack).build_blocking()?;
/// # Ok::<(), cachify::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack with named fields (rmp-serde): compact and
    /// self-describing, so `#[serde(skip_serializing_if)]`, `flatten` and
    /// untagged enums round-trip. The default.
    #[default]
    MessagePack,
    /// JSON (serde_json): readable in `redis-cli`. Needs the `json` feature.
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    Json,
    /// bincode 2 with its standard configuration. Needs the `bincode`
    /// feature. bincode is unmaintained and not self-describing (no
    /// `skip_serializing_if`, `flatten` or untagged enums); prefer MessagePack.
    #[cfg(feature = "bincode")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bincode")))]
    Bincode,
}

/// Deepest nesting a stored MessagePack value may have. Bytes in Redis may
/// come from anyone; rmp-serde's own limit (1024) lets a 1 KiB value
/// overflow a 2 MiB thread stack in a debug build.
const MAX_DEPTH: usize = 128;

impl Codec {
    fn tag(self) -> u8 {
        match self {
            Codec::MessagePack => b'M',
            #[cfg(feature = "json")]
            Codec::Json => b'J',
            #[cfg(feature = "bincode")]
            Codec::Bincode => b'B',
        }
    }

    /// Encodes a value, tag byte first.
    pub(crate) fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut bytes = Vec::with_capacity(64);
        bytes.push(self.tag());
        match self {
            Codec::MessagePack => {
                rmp_serde::encode::write_named(&mut bytes, value).map_err(CodecError::new)?
            }
            #[cfg(feature = "json")]
            Codec::Json => serde_json::to_writer(&mut bytes, value).map_err(CodecError::new)?,
            #[cfg(feature = "bincode")]
            Codec::Bincode => {
                bincode::serde::encode_into_std_write(
                    value,
                    &mut bytes,
                    bincode::config::standard(),
                )
                .map_err(CodecError::new)?;
            }
        }
        Ok(bytes)
    }

    /// Decodes bytes written by [`Codec::encode`] with the same codec.
    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        let Some((&tag, body)) = bytes.split_first() else {
            return Err(CodecError::new("empty value"));
        };
        if tag != self.tag() {
            return Err(CodecError::new(format_args!(
                "value was not written by the {self:?} codec (tag byte {tag:#04x})"
            )));
        }
        match self {
            Codec::MessagePack => {
                let mut deserializer = rmp_serde::Deserializer::from_read_ref(body);
                deserializer.set_max_depth(MAX_DEPTH);
                T::deserialize(&mut deserializer).map_err(CodecError::new)
            }
            #[cfg(feature = "json")]
            Codec::Json => serde_json::from_slice(body).map_err(CodecError::new),
            #[cfg(feature = "bincode")]
            Codec::Bincode => {
                let (value, read) =
                    bincode::serde::decode_from_slice(body, bincode::config::standard())
                        .map_err(CodecError::new)?;
                if read != body.len() {
                    return Err(CodecError::new("trailing bytes after a bincode value"));
                }
                Ok(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct User {
        id: i64,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        nickname: Option<String>,
        #[serde(flatten)]
        extra: Extra,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Extra {
        email: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(u64),
        Name(String),
    }

    #[test]
    fn message_pack_round_trips_serde_attributes() {
        let user = User {
            id: 7,
            nickname: None,
            extra: Extra {
                email: "a@b.c".into(),
            },
        };
        let bytes = Codec::MessagePack.encode(&user).unwrap();
        assert_eq!(bytes[0], b'M');
        assert_eq!(Codec::MessagePack.decode::<User>(&bytes).unwrap(), user);

        for id in [Id::Number(3), Id::Name("x".into())] {
            let bytes = Codec::MessagePack.encode(&id).unwrap();
            assert_eq!(Codec::MessagePack.decode::<Id>(&bytes).unwrap(), id);
        }
    }

    #[test]
    fn deeply_nested_values_are_refused() {
        // 1,000 nested one-element arrays around an integer.
        let mut bytes = vec![b'M'];
        bytes.extend(std::iter::repeat_n(0x91, 1000));
        bytes.push(0x01);
        assert!(
            Codec::MessagePack
                .decode::<serde::de::IgnoredAny>(&bytes)
                .is_err()
        );
        let mut shallow = vec![b'M'];
        shallow.extend(std::iter::repeat_n(0x91, 10));
        shallow.push(0x01);
        assert!(
            Codec::MessagePack
                .decode::<serde::de::IgnoredAny>(&shallow)
                .is_ok()
        );
    }

    #[test]
    fn foreign_or_empty_bytes_are_errors_not_values() {
        assert!(Codec::MessagePack.decode::<u8>(b"").is_err());
        // JSON text would decode as a MessagePack integer without the tag check.
        assert!(Codec::MessagePack.decode::<u8>(b"{\"a\":1}").is_err());
        assert!(
            Codec::MessagePack
                .decode::<String>(b"Mgarbage\xc1")
                .is_err()
        );
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips() {
        let user = User {
            id: 1,
            nickname: Some("n".into()),
            extra: Extra { email: "e".into() },
        };
        let bytes = Codec::Json.encode(&user).unwrap();
        assert_eq!(Codec::Json.decode::<User>(&bytes).unwrap(), user);
        assert!(Codec::MessagePack.decode::<User>(&bytes).is_err());
    }

    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_round_trips_plain_structs() {
        let bytes = Codec::Bincode.encode(&Extra { email: "e".into() }).unwrap();
        assert_eq!(
            Codec::Bincode.decode::<Extra>(&bytes).unwrap(),
            Extra { email: "e".into() }
        );
    }
}
