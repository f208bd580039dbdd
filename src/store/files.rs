//! Input files as the subcommands and jobs open them: mapped into memory when they are regular
//! files (no copy out of the page cache: for captures and IPFIX files that copy costs as much as
//! decoding), read otherwise.

use crate::meter::capture::{CaptureError, CaptureReader};
use bytes::Bytes;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// How a file is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Map regular files; `populate` faults every page in up front (fast for files that fit in
    /// the page cache, wasteful for multi-GB captures).
    Map { populate: bool },
    /// read(2) only: for files another process may still be writing or truncating.
    Read,
}

/// The whole file as one buffer, if it is a non-empty regular file and mapping works.
pub fn map_file(file: &File, access: Access) -> Option<Bytes> {
    let Access::Map { populate } = access else {
        return None;
    };
    if !file.metadata().is_ok_and(|m| m.is_file() && m.len() > 0) {
        return None;
    }
    let mut options = memmap2::MmapOptions::new();
    if populate {
        options.populate();
    }
    // SAFETY: the map is read-only and private. Rust assumes the bytes do not change while they
    // are borrowed; another process writing the file breaks that, and one truncating it raises
    // SIGBUS. `Access::Read` (dump --no-mmap) is the way out for such files; ripgrep makes the
    // same trade for the same reason.
    let map = unsafe { options.map(file) }.ok()?;
    // Sequential reading: let the kernel read ahead. A hint: failing changes nothing.
    let _ = map.advise(memmap2::Advice::Sequential);
    Some(Bytes::from_owner(map))
}

/// A capture file, mapped when it can be, else read through a 1 MiB buffer.
pub fn open_capture(
    path: &Path,
    access: Access,
) -> Result<CaptureReader<BufReader<File>>, CaptureError> {
    let file = File::open(path)?;
    match map_file(&file, access) {
        Some(all) => CaptureReader::from_bytes(all),
        None => CaptureReader::new(BufReader::with_capacity(1 << 20, file)),
    }
}
