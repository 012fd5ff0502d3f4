//! Reading log files, plain or gzip, and merging several files of one log by time.

use super::CorrelateError;
use flate2::read::MultiGzDecoder;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// One input file read line by line.
pub struct LineSource {
    pub name: String,
    reader: Box<dyn BufRead>,
    /// 1-based number of the line last read.
    pub line_number: u64,
}

impl LineSource {
    pub fn new(name: impl Into<String>, reader: Box<dyn BufRead>) -> LineSource {
        LineSource {
            name: name.into(),
            reader,
            line_number: 0,
        }
    }

    /// Opens a file, or standard input for `-`. A file starting with the gzip
    /// magic bytes is decompressed, whatever its name.
    pub fn open(path: &Path) -> Result<LineSource, CorrelateError> {
        let name = path.display().to_string();
        if path == Path::new("-") {
            return Ok(LineSource::new(name, Box::new(BufReader::new(io::stdin()))));
        }
        let io_error = |source| CorrelateError::Input {
            path: name.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io_error)?);
        let is_gzip = reader
            .fill_buf()
            .map_err(io_error)?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead> = if is_gzip {
            Box::new(BufReader::new(MultiGzDecoder::new(reader)))
        } else {
            Box::new(reader)
        };
        Ok(LineSource::new(name, reader))
    }

    /// Reads the next line, with its line ending, into `line`. Returns false at
    /// the end of the input.
    pub fn read_line(&mut self, line: &mut Vec<u8>) -> Result<bool, CorrelateError> {
        line.clear();
        let read = self
            .reader
            .read_until(b'\n', line)
            .map_err(|source| CorrelateError::Input {
                path: self.name.clone(),
                source,
            })?;
        if read == 0 {
            return Ok(false);
        }
        self.line_number += 1;
        Ok(true)
    }
}

/// Splits a line into its content and its ending (`\n`, `\r\n` or nothing).
pub fn split_line_ending(line: &[u8]) -> (&[u8], &[u8]) {
    let content_length = if line.ends_with(b"\r\n") {
        line.len() - 2
    } else if line.ends_with(b"\n") {
        line.len() - 1
    } else {
        line.len()
    };
    line.split_at(content_length)
}

/// An item that a [`Merge`] orders by its key.
pub struct Keyed<T> {
    /// Time used for ordering, in microseconds.
    pub key: i64,
    pub item: T,
}

/// Merges items from several sources, each roughly in time order, into one
/// stream in time order. It keeps one pending item per source, so memory does
/// not grow with the size of the files.
///
/// Rotated files of one log cover consecutive time ranges, so the merge reads
/// them in order whatever order they were given in, and interleaves files that
/// overlap in time.
pub struct Merge<T, S> {
    sources: Vec<S>,
    pending: Vec<Option<Keyed<T>>>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

impl<T, S> Merge<T, S> {
    /// Creates the merge and reads the first item of each source with `next`.
    pub fn new(
        mut sources: Vec<S>,
        mut next: impl FnMut(&mut S) -> Result<Option<Keyed<T>>, CorrelateError>,
    ) -> Result<Merge<T, S>, CorrelateError> {
        let mut pending = Vec::with_capacity(sources.len());
        let mut heap = BinaryHeap::new();
        for (index, source) in sources.iter_mut().enumerate() {
            let first = next(source)?;
            if let Some(keyed) = &first {
                heap.push(Reverse((keyed.key, index)));
            }
            pending.push(first);
        }
        Ok(Merge {
            sources,
            pending,
            heap,
        })
    }

    /// Returns the pending item with the smallest key and reads the next item of
    /// its source with `next`. Ties go to the source given first.
    pub fn pop(
        &mut self,
        next: impl FnOnce(&mut S) -> Result<Option<Keyed<T>>, CorrelateError>,
    ) -> Result<Option<T>, CorrelateError> {
        let Some(Reverse((_, index))) = self.heap.pop() else {
            return Ok(None);
        };
        let current = self.pending[index]
            .take()
            .expect("a source in the heap has a pending item");
        let following = next(&mut self.sources[index])?;
        if let Some(keyed) = &following {
            self.heap.push(Reverse((keyed.key, index)));
        }
        self.pending[index] = following;
        Ok(Some(current.item))
    }

    pub fn sources(&self) -> &[S] {
        &self.sources
    }
}
