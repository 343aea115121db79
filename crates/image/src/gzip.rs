//! A gzip reader that skips the CRC-32: used only where the uncompressed bytes are checked
//! against a SHA-256 diff id anyway, so the CRC (several percent of a pull's CPU with the
//! portable CRC code) would verify the same bytes twice. Handles multi-member streams;
//! anything after the last member is left unread for the caller's digest to cover.

use std::io::{self, BufRead, Read};

use flate2::bufread::DeflateDecoder;

const FTEXT_MASK: u8 = 0xe0; // reserved flag bits must be zero
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

pub struct GzNoCrc<R: BufRead> {
    state: State<R>,
}

enum State<R: BufRead> {
    Header(R),
    Body(DeflateDecoder<R>),
    Done(R),
    Poisoned,
}

impl<R: BufRead> GzNoCrc<R> {
    pub fn new(r: R) -> Self {
        GzNoCrc {
            state: State::Header(r),
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {msg}"))
}

fn skip_header(r: &mut impl BufRead) -> io::Result<()> {
    let mut h = [0u8; 10];
    r.read_exact(&mut h)?;
    if h[0] != 0x1f || h[1] != 0x8b {
        return Err(bad("bad magic"));
    }
    if h[2] != 8 {
        return Err(bad("unknown compression method"));
    }
    let flags = h[3];
    if flags & FTEXT_MASK != 0 {
        return Err(bad("reserved header flags set"));
    }
    if flags & FEXTRA != 0 {
        let mut l = [0u8; 2];
        r.read_exact(&mut l)?;
        io::copy(&mut r.take(u16::from_le_bytes(l) as u64), &mut io::sink())?;
    }
    for f in [FNAME, FCOMMENT] {
        if flags & f != 0 {
            let mut v = Vec::new();
            r.read_until(0, &mut v)?;
            if v.last() != Some(&0) {
                return Err(bad("truncated header"));
            }
        }
    }
    if flags & FHCRC != 0 {
        let mut c = [0u8; 2];
        r.read_exact(&mut c)?;
    }
    Ok(())
}

impl<R: BufRead> Read for GzNoCrc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match std::mem::replace(&mut self.state, State::Poisoned) {
                State::Header(mut r) => {
                    skip_header(&mut r)?;
                    self.state = State::Body(DeflateDecoder::new(r));
                }
                State::Body(mut d) => {
                    let n = d.read(buf)?;
                    if n > 0 || buf.is_empty() {
                        self.state = State::Body(d);
                        return Ok(n);
                    }
                    let mut r = d.into_inner();
                    let mut trailer = [0u8; 8];
                    r.read_exact(&mut trailer)
                        .map_err(|_| bad("truncated trailer"))?;
                    // Another member follows only if its magic does.
                    let next = r.fill_buf()?;
                    self.state = if next.starts_with(&[0x1f, 0x8b]) {
                        State::Header(r)
                    } else {
                        State::Done(r)
                    };
                }
                State::Done(r) => {
                    self.state = State::Done(r);
                    return Ok(0);
                }
                State::Poisoned => return Err(bad("reader used after an error")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_single_and_multi_member_streams() {
        let mut out = Vec::new();
        GzNoCrc::new(&gz(b"hello world")[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello world");
        let mut two = gz(b"one ");
        two.extend(gz(b"two"));
        two.extend(b"\0\0trailing");
        let mut out = Vec::new();
        let mut r = GzNoCrc::new(&two[..]);
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"one two");
    }

    #[test]
    fn refuses_truncation_and_garbage() {
        let g = gz(&[7u8; 10000]);
        let mut out = Vec::new();
        assert!(GzNoCrc::new(&g[..g.len() / 2])
            .read_to_end(&mut out)
            .is_err());
        let mut out = Vec::new();
        assert!(GzNoCrc::new(&b"\x1f\x8b\x09\0\0\0\0\0\0\0"[..])
            .read_to_end(&mut out)
            .is_err());
    }
}
