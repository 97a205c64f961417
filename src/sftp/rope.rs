//! Received bytes as a queue of shared chunks, so that packets can be cut out of the stream
//! without copying: a WRITE that spans several SSH packets reaches the disk straight from
//! the chunks it arrived in.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

#[derive(Default)]
pub(super) struct Rope {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Rope {
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.parts.push_back(chunk);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Fills `out` with the first bytes held; false (and `out` unspecified) if too few.
    pub fn peek(&self, out: &mut [u8]) -> bool {
        out.len() <= self.len && copy_front(&self.parts, out) == out.len()
    }

    /// Drops up to `n` bytes from the front; returns how many were dropped.
    pub fn advance(&mut self, mut n: usize) -> usize {
        let dropped = n.min(self.len);
        self.len -= dropped;
        n = dropped;
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            if front.len() > n {
                front.advance(n);
                break;
            }
            n -= front.len();
            self.parts.pop_front();
        }
        dropped
    }

    /// Cuts the first `n` bytes (at most `len()`) off as the chunks that hold them.
    pub fn take(&mut self, n: usize) -> Pieces {
        let mut n = n.min(self.len);
        self.len -= n;
        let mut out = Vec::with_capacity(2);
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            if front.len() > n {
                out.push(front.split_to(n));
                break;
            }
            n -= front.len();
            out.extend(self.parts.pop_front());
        }
        Pieces(out)
    }
}

/// Consecutive bytes held as a few shared chunks.
pub(super) struct Pieces(pub Vec<Bytes>);

impl Pieces {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// A copy of the first `n` bytes (fewer if fewer are held).
    pub fn prefix(&self, n: usize) -> Bytes {
        let mut out = vec![0; n.min(self.len())];
        copy_front(&self.0, &mut out);
        out.into()
    }

    /// The bytes in one piece: free when they already are, a copy otherwise.
    pub fn concat(mut self) -> Bytes {
        match self.0.len() {
            0 => Bytes::new(),
            1 => self.0.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.len());
                for p in &self.0 {
                    all.extend_from_slice(p);
                }
                all.freeze()
            }
        }
    }

    /// Drops the first `n` bytes and keeps at most `keep` of the rest.
    pub fn slice(self, mut n: usize, mut keep: usize) -> Pieces {
        let mut out = Vec::with_capacity(self.0.len());
        for mut p in self.0 {
            if n >= p.len() {
                n -= p.len();
                continue;
            }
            p.advance(n);
            n = 0;
            if keep == 0 {
                break;
            }
            p.truncate(keep);
            keep -= p.len();
            out.push(p);
        }
        Pieces(out)
    }
}

/// Copies the front of `parts` into `out`; returns how many bytes it copied.
fn copy_front<'a>(parts: impl IntoIterator<Item = &'a Bytes>, out: &mut [u8]) -> usize {
    let mut filled = 0;
    for part in parts {
        let n = part.len().min(out.len() - filled);
        out[filled..filled + n].copy_from_slice(&part[..n]);
        filled += n;
        if filled == out.len() {
            break;
        }
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(chunks: &[&[u8]]) -> Rope {
        let mut r = Rope::default();
        for c in chunks {
            r.push(Bytes::copy_from_slice(c));
        }
        r
    }

    #[test]
    fn peeks_across_chunks() {
        let r = rope(&[b"ab", b"", b"c", b"def"]);
        let mut out = [0; 5];
        assert!(r.peek(&mut out));
        assert_eq!(&out, b"abcde");
        let mut too_long = [0; 7];
        assert!(!r.peek(&mut too_long));
    }

    #[test]
    fn takes_without_copying_whole_chunks() {
        let mut r = rope(&[b"abc", b"defg", b"hi"]);
        let p = r.take(5);
        assert_eq!(p.0.len(), 2);
        assert_eq!(p.concat(), Bytes::from_static(b"abcde"));
        assert_eq!(r.len(), 4);
        assert_eq!(r.take(10).concat(), Bytes::from_static(b"fghi"));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn advances_and_reports_what_it_dropped() {
        let mut r = rope(&[b"abc", b"def"]);
        assert_eq!(r.advance(4), 4);
        assert_eq!(r.take(2).concat(), Bytes::from_static(b"ef"));
        assert_eq!(r.advance(3), 0);
    }

    #[test]
    fn slices_pieces() {
        let p = rope(&[b"abc", b"defg", b"hi"]).take(9);
        let s = p.slice(2, 5);
        assert_eq!(s.len(), 5);
        assert_eq!(s.concat(), Bytes::from_static(b"cdefg"));
        let p = rope(&[b"abc", b"defg"]).take(7);
        assert_eq!(p.slice(3, 100).concat(), Bytes::from_static(b"defg"));
        let p = rope(&[b"abc"]).take(3);
        assert_eq!(p.slice(3, 1).len(), 0);
    }

    #[test]
    fn copies_a_prefix_across_pieces() {
        let p = rope(&[b"ab", b"cde", b"f"]).take(6);
        assert_eq!(p.prefix(4), Bytes::from_static(b"abcd"));
        assert_eq!(p.prefix(10), Bytes::from_static(b"abcdef"));
        assert_eq!(p.len(), 6, "prefix leaves the pieces as they were");
    }
}
