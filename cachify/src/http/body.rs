//! Reading a response body up to the size limit without ever holding more:
//! a body that turns out too large (or has trailers, or fails) is sent on
//! as what was read followed by the rest of the stream.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};

/// What [`buffer`] found.
pub(super) enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The body went over the limit: what was read, then the rest.
    TooLarge(Body),
    /// The body had trailers or failed: it is sent on as it came.
    Unstorable(Body),
}

/// Whether the body's size hint alone proves it is over `limit`.
pub(super) fn known_too_large(body: &Body, limit: usize) -> bool {
    let hint = body.size_hint();
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    hint.lower() > limit || hint.upper().is_some_and(|upper| upper > limit)
}

/// Reads `body` until it ends or holds more than `limit` bytes.
pub(super) async fn buffer(mut body: Body, limit: usize) -> Buffered {
    let mut read = VecDeque::new();
    let mut size = 0usize;
    loop {
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => return Buffered::Complete(concat(read, size)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    size = size.saturating_add(data.len());
                    read.push_back(Frame::data(data));
                    if size > limit {
                        return Buffered::TooLarge(Body::new(Resumed {
                            read,
                            error: None,
                            rest: Some(body),
                        }));
                    }
                }
                // Trailers end the body; a cache could not replay them.
                Err(trailers) => {
                    read.push_back(trailers);
                    return Buffered::Unstorable(Body::new(Resumed {
                        read,
                        error: None,
                        rest: None,
                    }));
                }
            },
            Some(Err(error)) => {
                return Buffered::Unstorable(Body::new(Resumed {
                    read,
                    error: Some(error),
                    rest: None,
                }));
            }
        }
    }
}

/// Joins data frames without copying when there is only one.
fn concat(mut read: VecDeque<Frame<Bytes>>, size: usize) -> Bytes {
    if read.len() == 1 {
        return read
            .pop_front()
            .and_then(|frame| frame.into_data().ok())
            .unwrap_or_default();
    }
    let mut joined = Vec::with_capacity(size);
    for frame in read {
        if let Some(data) = frame.data_ref() {
            joined.extend_from_slice(data);
        }
    }
    joined.into()
}

/// A body that replays the frames already read, then an error the inner
/// body returned while they were read, then the inner body's remaining
/// frames.
struct Resumed {
    read: VecDeque<Frame<Bytes>>,
    error: Option<axum::Error>,
    rest: Option<Body>,
}

impl HttpBody for Resumed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // Every field is `Unpin` (`Body` is boxed).
        let this = self.get_mut();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .read
            .iter()
            .filter_map(Frame::data_ref)
            .map(|data| data.len() as u64)
            .sum();
        let Some(rest) = &self.rest else {
            return SizeHint::with_exact(read);
        };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        // Upper first: `set_lower` refuses a lower bound above the upper one.
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint.set_lower(rest.lower().saturating_add(read));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut body: Body) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(data) = frame.unwrap().into_data() {
                all.extend_from_slice(&data);
            }
        }
        all
    }

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|part| Ok(Bytes::from_static(part.as_bytes())))
            .collect();
        Body::new(stream_of(frames))
    }

    /// A body of the given frames with no size hint, like a stream.
    fn stream_of(
        frames: Vec<Result<Bytes, std::io::Error>>,
    ) -> impl HttpBody<Data = Bytes, Error = std::io::Error> + Send + 'static {
        struct Frames(VecDeque<Result<Bytes, std::io::Error>>);
        impl HttpBody for Frames {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
                Poll::Ready(
                    self.get_mut()
                        .0
                        .pop_front()
                        .map(|item| item.map(Frame::data)),
                )
            }
        }
        Frames(frames.into())
    }

    #[tokio::test]
    async fn small_bodies_are_read_whole() {
        match buffer(chunks(&["ab", "cd"]), 4).await {
            Buffered::Complete(bytes) => assert_eq!(&bytes[..], b"abcd"),
            _ => panic!("expected the whole body"),
        }
    }

    #[tokio::test]
    async fn large_bodies_resume_where_reading_stopped() {
        match buffer(chunks(&["ab", "cd", "ef", "gh"]), 3).await {
            Buffered::TooLarge(body) => {
                assert_eq!(body.size_hint().lower(), 4, "what was read");
                assert_eq!(collect(body).await, b"abcdefgh");
            }
            _ => panic!("expected a body over the limit"),
        }
    }

    #[tokio::test]
    async fn errors_are_passed_on_after_the_data() {
        let frames = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("boom")),
        ];
        let Buffered::Unstorable(mut body) = buffer(Body::new(stream_of(frames)), 10).await else {
            panic!("expected an unstorable body");
        };
        let first = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert_eq!(&first.unwrap().unwrap().into_data().unwrap()[..], b"ab");
        let second = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(second.unwrap().is_err());
    }

    #[test]
    fn size_hints_decide_early() {
        assert!(known_too_large(&Body::from(vec![0u8; 11]), 10));
        assert!(!known_too_large(&Body::from(vec![0u8; 10]), 10));
        assert!(!known_too_large(&chunks(&["a"]), 0), "no hint: must read");
    }
}
