//! Byte streams (stdin, a producer command): chunk, hash, deduplicate, queue.

use crate::chunker::{Chunker, ChunkerParams};
use crate::error::{Error, Result};
use crate::format::snapshot::{Content, ContentBuilder};
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::saver::Saver;
use std::io::Read;

/// Store everything `reader` yields; returns its content list.
pub fn store_stream<R: Read>(
    saver: &Saver,
    reader: R,
    params: ChunkerParams,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<Content> {
    let mut builder = ContentBuilder::new();
    for chunk in Chunker::new(reader, params) {
        cancel.check()?;
        let chunk = chunk.map_err(|e| Error::source(format!("cannot read the input stream: {e}")))?;
        let len = chunk.len() as u64;
        let id = saver.save_chunk(chunk)?;
        builder.push(id, len, saver)?;
        progress.advance(len);
    }
    cancel.check()?;
    builder.finish(saver)
}
