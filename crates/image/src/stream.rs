//! The bridge from async downloads to the blocking unpack code: chunks sent on a tokio
//! channel, read back as a `std::io::Read` on a blocking thread.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::sync::mpsc;

/// The blocking end of a download channel. A sender dropping without an error is the end
/// of the stream; an `Err` sent down the channel is returned from `read`.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}
