//! The entry envelope: a `#[cached]` value stored with its metadata, for
//! functions with `stale_if_error` or `early_refresh` (others store their
//! value as it is and pay nothing for this).
//!
//! An [`Entry`] holds the value, the wall-clock time (Unix milliseconds)
//! until which it is fresh, and how long the function took to compute it.
//! The store keeps it longer than it is fresh when the function has
//! `stale_if_error`: after that time it is *stale*, served only when a
//! recomputation fails. `early_refresh` reads the computation time to
//! decide, on each hit, whether to recompute before the value expires
//! (XFetch, see [`Entry::refresh_now`]).
//!
//! Wall-clock time, because entries are shared by every process using the
//! store: processes whose clocks disagree see entries turn stale earlier
//! or later by that much.
//!
//! Compatibility: the envelope is a struct whose first field is a fixed
//! marker, so a plain value written without the envelope (by an older
//! version, or before the option was added) never decodes as an entry. It
//! is a codec error, which the cache treats as a miss and overwrites; and
//! an entry read by a function without these options is a miss the same
//! way. Never an error for the caller.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What the marker field holds.
const MARKER: &str = "cachify-entry-1";

/// The marker field: serializes as [`MARKER`], and deserializes only from it.
#[derive(Clone, Copy, Debug)]
struct Marker;

impl Serialize for Marker {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(MARKER)
    }
}

impl<'de> Deserialize<'de> for Marker {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let marker = String::deserialize(deserializer)?;
        if marker == MARKER {
            Ok(Marker)
        } else {
            Err(D::Error::custom("not a cachify entry"))
        }
    }
}

/// A stored value with the time it stays fresh and what it cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry<T> {
    #[serde(rename = "cachify")]
    marker: Marker,
    /// Unix milliseconds until which the value is fresh; `u64::MAX`: for ever.
    fresh_until: u64,
    /// How long the function took to compute it, in microseconds.
    took: u64,
    /// The value.
    pub(crate) value: T,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_millis() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn saturating_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl<T> Entry<T> {
    /// `value`, computed in `took`, fresh for `fresh_for` from `now`
    /// (Unix ms; `None`: for ever).
    pub(crate) fn new(value: T, now: u64, fresh_for: Option<Duration>, took: Duration) -> Self {
        Self {
            marker: Marker,
            fresh_until: fresh_for.map_or(u64::MAX, |fresh_for| {
                now.saturating_add(saturating_millis(fresh_for))
            }),
            took: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            value,
        }
    }

    /// When the value stops being fresh, in Unix ms: tells one version
    /// of an entry from the next.
    pub(crate) fn fresh_until(&self) -> u64 {
        self.fresh_until
    }

    /// Whether the value is still fresh at `now` (Unix ms).
    pub(crate) fn fresh_at(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    /// Whether a hit at `now` (Unix ms) should recompute the value ahead
    /// of its expiry: XFetch (Vattani, Chierichetti and Lowenstein, VLDB
    /// 2015) with β = 1, i.e. when `now - took · ln(u) ≥ fresh_until` for
    /// `u` uniform in (0, 1]. The chance grows as expiry nears, and
    /// earlier for values that take long to compute, so under steady load
    /// one hit shortly before expiry starts the recomputation.
    pub(crate) fn refresh_now(&self, now: u64, uniform: f64) -> bool {
        if self.fresh_until == u64::MAX {
            return false;
        }
        let took_ms = self.took as f64 / 1_000.0;
        // -ln(u) >= 0 for u in (0, 1].
        let ahead = took_ms * -uniform.ln();
        now as f64 + ahead >= self.fresh_until as f64
    }
}

/// A number uniform in (0, 1], fresh each call: std's randomly keyed
/// hasher, so no generator state to keep. Only early-refresh hits draw.
pub(crate) fn uniform() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 53 random bits, shifted off zero.
    ((bits >> 11) + 1) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        fresh_until: u64,
        took: u64,
        value: u32,
    }

    #[test]
    fn entries_round_trip_and_plain_values_never_decode_as_entries() {
        let entry = Entry::new(7_u32, 1_000, Some(Duration::from_secs(2)), Duration::ZERO);
        let codecs = [
            Codec::MessagePack,
            #[cfg(feature = "json")]
            Codec::Json,
            #[cfg(feature = "bincode")]
            Codec::Bincode,
        ];
        for codec in codecs {
            let bytes = codec.encode(&entry).unwrap();
            let back: Entry<u32> = codec.decode(&bytes).unwrap();
            assert_eq!((back.value, back.fresh_until()), (7, 3_000));
            // A value written without the envelope, even one shaped like it.
            let plain = Plain {
                fresh_until: 1,
                took: 2,
                value: 3,
            };
            let plain = codec.encode(&plain).unwrap();
            assert!(codec.decode::<Entry<u32>>(&plain).is_err(), "{codec:?}");
            assert!(
                codec
                    .decode::<Entry<u32>>(&codec.encode(&7_u32).unwrap())
                    .is_err()
            );
            // And an entry is no plain value for a function without the options.
            assert!(codec.decode::<u32>(&bytes).is_err(), "{codec:?}");
        }
    }

    #[test]
    fn freshness_and_xfetch() {
        let entry = Entry::new(
            (),
            10_000,
            Some(Duration::from_secs(1)),
            Duration::from_millis(100),
        );
        assert!(entry.fresh_at(10_999));
        assert!(!entry.fresh_at(11_000));
        // u = 1: ln(u) = 0, so only at expiry.
        assert!(!entry.refresh_now(10_999, 1.0));
        assert!(entry.refresh_now(11_000, 1.0));
        // u = e^-2: 200 ms ahead.
        let u = (-2.0_f64).exp();
        assert!(entry.refresh_now(10_801, u));
        assert!(!entry.refresh_now(10_700, u));
        let forever = Entry::new((), 0, None, Duration::from_secs(1));
        assert!(forever.fresh_at(u64::MAX - 1));
        assert!(!forever.refresh_now(u64::MAX - 1, 1e-300));
        for _ in 0..1_000 {
            let u = uniform();
            assert!(u > 0.0 && u <= 1.0, "{u}");
        }
        assert_ne!(uniform(), uniform());
    }
}
