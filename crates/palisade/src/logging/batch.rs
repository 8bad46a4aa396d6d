//! A log writer that batches lines in memory and writes them from one background thread.
//!
//! Writing each log line with its own `write` syscall, and waking a writer thread for each
//! line, costs microseconds per request. [`BatchWriter`] appends each formatted line to a
//! shared buffer (one short, uncontended lock) and a background thread writes the whole
//! buffer every `flush_interval`, or sooner once it holds 256 KiB (or a quarter of
//! `max_buffer`, if less), in `write`s of at most 64 KiB (cheaper per byte in the kernel than
//! larger ones, and never a long stall of the core the server runs on). Memory is bounded: at
//! `max_buffer` bytes producers wait for the writer instead of growing the buffer, so lines
//! are never dropped and never pile up without limit. Dropping the [`BatchWriterGuard`]
//! flushes what is left and stops the thread.
//!
//! ```
//! use palisade::logging::{BatchWriter, ContextFormat};
//! use std::time::Duration;
//!
//! let (writer, guard) = BatchWriter::new(std::io::sink(), Duration::from_millis(50), 8 << 20);
//! let subscriber = tracing_subscriber::fmt()
//!     .event_format(ContextFormat::json())
//!     .with_writer(writer)
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || tracing::info!("hello"));
//! drop(guard); // flushes
//! ```

use std::{
    io::{self, Write},
    mem,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// The largest single `write` to the sink.
const WRITE_CHUNK: usize = 64 * 1024;

/// The batch size at which the writer thread is woken before its interval ends.
const WAKE_AT: usize = 4 * WRITE_CHUNK;

#[derive(Debug)]
struct State {
    buf: Vec<u8>,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signals the writer thread: buffer large, or closing.
    wake: Condvar,
    /// Signals producers: space freed.
    space: Condvar,
    wake_at: usize,
    max_buffer: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bytes behind; keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to the subscriber. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Flushes and stops the writer thread when dropped; keep it alive while logging.
#[derive(Debug)]
#[must_use = "dropping the guard stops the writer"]
pub struct BatchWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// Starts the writer thread for `out`. `max_buffer` bounds the bytes held in memory.
    pub fn new<W: Write + Send + 'static>(
        out: W,
        flush_interval: Duration,
        max_buffer: usize,
    ) -> (Self, BatchWriterGuard) {
        let max_buffer = max_buffer.max(64 * 1024);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(64 * 1024),
                closed: false,
            }),
            wake: Condvar::new(),
            space: Condvar::new(),
            // Written soon after a chunk's worth has gathered: the batch stays small and
            // in cache, and no single write is long.
            wake_at: (max_buffer / 4).min(WAKE_AT),
            max_buffer,
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("palisade-log".into())
            .spawn(move || run(&thread_shared, out, flush_interval))
            .expect("spawn log writer thread");
        (
            Self {
                shared: shared.clone(),
            },
            BatchWriterGuard {
                shared,
                thread: Some(thread),
            },
        )
    }

    /// Appends complete lines (each ending in `\n`) to the batch; waits only when the batch is
    /// at its cap.
    pub fn write_line(&self, bytes: &[u8]) {
        self.append(bytes);
    }

    fn append(&self, bytes: &[u8]) {
        let mut state = self.shared.lock();
        while state.buf.len() + bytes.len() > self.shared.max_buffer
            && !state.buf.is_empty()
            && !state.closed
        {
            self.shared.wake.notify_one();
            state = self
                .shared
                .space
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let before = state.buf.len();
        state.buf.extend_from_slice(bytes);
        // Once, as the batch crosses the mark (a wake-up is a syscall).
        if before < self.shared.wake_at && state.buf.len() >= self.shared.wake_at {
            self.shared.wake.notify_one();
        }
    }
}

fn run<W: Write>(shared: &Shared, mut out: W, interval: Duration) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        let closed = {
            let mut state = shared.lock();
            if state.buf.len() < shared.wake_at && !state.closed {
                state = shared
                    .wake
                    .wait_timeout(state, interval)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            mem::swap(&mut state.buf, &mut spare);
            shared.space.notify_all();
            state.closed
        };
        if !spare.is_empty() {
            // In pieces of at most `WRITE_CHUNK`: on Linux (ext4) a 1.5 MiB `write` cost about
            // nine times the kernel time per byte of 64 KiB ones (0.57 against 0.06 µs per
            // 330-byte line), and one long `write` holds the core a request may be waiting for.
            // Nowhere to report a failing log sink; keep serving.
            for chunk in spare.chunks(WRITE_CHUNK) {
                if out.write_all(chunk).is_err() {
                    break;
                }
            }
            let _ = out.flush();
            spare.clear();
        }
        if closed && shared.lock().buf.is_empty() {
            return;
        }
    }
}

impl Drop for BatchWriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.space.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One writer per event; each `write` appends to the shared batch.
#[derive(Debug)]
pub struct BatchLine<'a>(&'a BatchWriter);

impl Write for BatchLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchLine(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut g = self.0.lock().unwrap();
            g.0.extend_from_slice(b);
            g.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_in_few_writes_and_flushed_on_drop() {
        let sink = Sink::default();
        let (w, guard) = BatchWriter::new(sink.clone(), Duration::from_secs(3600), 1 << 20);
        for i in 0..1000 {
            w.make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let g = sink.0.lock().unwrap();
        let text = String::from_utf8(g.0.clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
        assert!(g.1 < 10, "{} writes for 1000 lines", g.1);
    }

    #[test]
    fn producers_wait_at_the_cap_instead_of_growing_or_dropping() {
        let sink = Sink::default();
        let (w, guard) = BatchWriter::new(sink.clone(), Duration::from_millis(5), 64 * 1024);
        let line = vec![b'x'; 1023];
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                let line = line.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let mut l = line.clone();
                        l.push(b'\n');
                        w.make_writer().write_all(&l).unwrap();
                        assert!(w.shared.lock().buf.len() <= 64 * 1024);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().0.len(), 4 * 500 * 1024);
    }
}
