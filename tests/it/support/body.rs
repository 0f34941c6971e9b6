//! A streamed request body of deterministic pseudo-random bytes, produced chunk by chunk so
//! the whole body never sits in memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

pub struct Chunks {
    remaining: usize,
    chunk: usize,
    state: u64,
}

impl Chunks {
    pub fn new(total: usize, chunk: usize, seed: u64) -> Self {
        Chunks {
            remaining: total,
            chunk,
            state: seed | 1,
        }
    }

    fn next_chunk(&mut self) -> Bytes {
        let n = self.chunk.min(self.remaining);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            // xorshift64: cheap, deterministic, not compressible.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            out.extend_from_slice(&self.state.to_le_bytes()[..(n - out.len()).min(8)]);
        }
        self.remaining -= n;
        Bytes::from(out)
    }

    /// SHA-256 (hex) of the whole stream, computed by generating it once more.
    pub fn sha256_hex(total: usize, chunk: usize, seed: u64) -> String {
        let mut c = Chunks::new(total, chunk, seed);
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        while c.remaining > 0 {
            ctx.update(&c.next_chunk());
        }
        pix_auth_proxy::telemetry::hex(ctx.finish().as_ref())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(this.next_chunk()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}
