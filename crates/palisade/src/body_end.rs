//! What one polled frame of a response body means to a layer that watches the body to its
//! end (the access log, metrics): bytes sent and whether the body has ended.

use std::task::Poll;

use bytes::Buf;
use http_body::Frame;

/// One poll of a watched body, as the watching layer needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameSeen {
    /// Data bytes in this frame.
    pub(crate) bytes: u64,
    /// `Some(true)`: the body ended normally (hyper stops polling once the inner body
    /// reports its end, so this frame may be the last one it asks for); `Some(false)`: it
    /// failed; `None`: more may come.
    pub(crate) ended: Option<bool>,
}

/// Reads `frame`, just polled from a body whose `is_end_stream()` is now `inner_ended`.
pub(crate) fn see_frame<D: Buf, E>(
    frame: &Poll<Option<Result<Frame<D>, E>>>,
    inner_ended: bool,
) -> FrameSeen {
    match frame {
        Poll::Ready(Some(Ok(f))) => FrameSeen {
            bytes: f.data_ref().map_or(0, |d| d.remaining() as u64),
            ended: inner_ended.then_some(true),
        },
        Poll::Ready(None) => FrameSeen {
            bytes: 0,
            ended: Some(true),
        },
        Poll::Ready(Some(Err(_))) => FrameSeen {
            bytes: 0,
            ended: Some(false),
        },
        Poll::Pending => FrameSeen {
            bytes: 0,
            ended: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    type Polled = Poll<Option<Result<Frame<Bytes>, ()>>>;

    #[test]
    fn data_counts_and_the_end_is_normal_or_failed() {
        let data: Polled = Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc")))));
        assert_eq!(
            see_frame(&data, false),
            FrameSeen {
                bytes: 3,
                ended: None
            }
        );
        assert_eq!(
            see_frame(&data, true),
            FrameSeen {
                bytes: 3,
                ended: Some(true)
            }
        );
        assert_eq!(see_frame(&Polled::Ready(None), false).ended, Some(true));
        assert_eq!(
            see_frame(&Polled::Ready(Some(Err(()))), false).ended,
            Some(false)
        );
        assert_eq!(see_frame(&Polled::Pending, false).ended, None);
    }
}
