//! A bounded walk over an MP4 file's box tree, run before any MP4 parser sees
//! the file.
//!
//! MP4 parsers trust the sizes boxes declare: a child box of size 0 (which
//! only means "to the end of the file" at the top level), or smaller than its
//! own header, makes a parser's read loop stand still or step backwards, and
//! it loops forever. The walk reads only box headers and proves the tree is
//! well formed: every box at least as long as its header and inside its
//! parent, the children of every container box tiling it exactly, the nesting
//! no deeper and the boxes no more numerous than a real video needs.

use std::io::{Read, Seek, SeekFrom};

/// How deep and how many boxes a real file has room for. A camera or
/// encoder file nests about 8 deep (moov/trak/mdia/minf/stbl/stsd/avc1/avcC)
/// and has some tens of boxes in its metadata.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    pub max_depth: usize,
    pub max_boxes: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_depth: 16,
            max_boxes: 10_000,
        }
    }
}

/// Why the box tree was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoxError {
    #[error("no ftyp box at the start")]
    NoFtyp,
    #[error("no moov box")]
    NoMoov,
    #[error("truncated box header at offset {offset}")]
    TruncatedHeader { offset: u64 },
    #[error("box {kind} at offset {offset} has an impossible size {size}")]
    BadSize {
        kind: String,
        offset: u64,
        size: u64,
    },
    #[error("box {kind} at offset {offset} ends past its parent")]
    Overflows { kind: String, offset: u64 },
    #[error("boxes nested deeper than {max}")]
    TooDeep { max: usize },
    #[error("more than {max} boxes")]
    TooMany { max: usize },
    #[error("unreadable: {0}")]
    Io(String),
}

/// Where a container box's children start, counted from the end of its
/// header; `None` for boxes whose content is not boxes. These are the
/// containers of ISO/IEC 14496-12 and -14 an MP4 parser descends into.
fn children_offset(kind: &[u8; 4]) -> Option<u64> {
    match kind {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"edts" | b"udta" | b"mvex"
        | b"moof" | b"traf" | b"mfra" | b"ilst" => Some(0),
        // A full box (version and flags) with an entry count before its entries.
        b"stsd" | b"dref" => Some(8),
        // Visual sample entries: 8 bytes of sample entry, 70 of visual fields.
        b"avc1" | b"avc3" | b"hev1" | b"hvc1" | b"vp08" | b"vp09" | b"av01" | b"encv" => Some(78),
        // Audio sample entry: 8 bytes of sample entry, 20 of audio fields.
        b"mp4a" | b"enca" => Some(28),
        _ => None,
    }
}

struct Walker<'r, R> {
    reader: &'r mut R,
    limits: WalkLimits,
    boxes: usize,
}

/// One box header.
struct Header {
    kind: [u8; 4],
    /// Length of the header itself (8, or 16 with a 64-bit size).
    header_len: u64,
    /// The whole box's length, header included.
    size: u64,
}

impl<R: Read + Seek> Walker<'_, R> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BoxError> {
        self.reader
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.reader.read_exact(buf))
            .map_err(|e| BoxError::Io(e.to_string()))
    }

    /// Reads the header of the box at `offset` inside a parent ending at
    /// `end`; `to_end_allowed` says whether a size of 0 (to the end) is.
    fn header(&mut self, offset: u64, end: u64, to_end_allowed: bool) -> Result<Header, BoxError> {
        self.boxes += 1;
        if self.boxes > self.limits.max_boxes {
            return Err(BoxError::TooMany {
                max: self.limits.max_boxes,
            });
        }
        if end - offset < 8 {
            return Err(BoxError::TruncatedHeader { offset });
        }
        let mut head = [0u8; 8];
        self.read_at(offset, &mut head)?;
        let kind: [u8; 4] = head[4..8].try_into().expect("4 bytes");
        let small = u64::from(u32::from_be_bytes(head[0..4].try_into().expect("4 bytes")));
        let kind_name = || String::from_utf8_lossy(&kind).into_owned();
        let (header_len, size) = match small {
            0 if to_end_allowed => (8, end - offset),
            1 => {
                if end - offset < 16 {
                    return Err(BoxError::TruncatedHeader { offset });
                }
                let mut large = [0u8; 8];
                self.read_at(offset + 8, &mut large)?;
                (16, u64::from_be_bytes(large))
            }
            size => (8, size),
        };
        if size < header_len {
            return Err(BoxError::BadSize {
                kind: kind_name(),
                offset,
                size: small,
            });
        }
        if size > end - offset {
            return Err(BoxError::Overflows {
                kind: kind_name(),
                offset,
            });
        }
        Ok(Header {
            kind,
            header_len,
            size,
        })
    }

    /// Walks the boxes tiling `[start, end)` at nesting `depth`.
    fn walk_children(&mut self, start: u64, end: u64, depth: usize) -> Result<(), BoxError> {
        if depth > self.limits.max_depth {
            return Err(BoxError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        let mut offset = start;
        while offset < end {
            let header = self.header(offset, end, false)?;
            self.walk_content(offset, &header, depth)?;
            offset += header.size;
        }
        Ok(())
    }

    /// Descends into the box at `offset` if it is a container.
    fn walk_content(&mut self, offset: u64, header: &Header, depth: usize) -> Result<(), BoxError> {
        let content = offset + header.header_len;
        let end = offset + header.size;
        let skip = match &header.kind {
            // A `meta` box is a full box in ISO files; QuickTime writes it
            // without version and flags, starting straight with `hdlr`.
            b"meta" => {
                let mut first = [0u8; 8];
                if end - content < 8 {
                    return Err(BoxError::TruncatedHeader { offset: content });
                }
                self.read_at(content, &mut first)?;
                if first[0..4] == [0, 0, 0, 0] {
                    4
                } else if &first[4..8] == b"hdlr" {
                    0
                } else {
                    return Err(BoxError::BadSize {
                        kind: "meta".into(),
                        offset,
                        size: header.size,
                    });
                }
            }
            kind => match children_offset(kind) {
                Some(skip) => skip,
                None => return Ok(()),
            },
        };
        if end - content < skip {
            return Err(BoxError::BadSize {
                kind: String::from_utf8_lossy(&header.kind).into_owned(),
                offset,
                size: header.size,
            });
        }
        self.walk_children(content + skip, end, depth + 1)
    }
}

/// Walks the whole file of `size` bytes: it starts with `ftyp`, has a
/// `moov`, and its box tree is well formed within `limits`.
pub fn walk(
    reader: &mut (impl Read + Seek),
    size: u64,
    limits: WalkLimits,
) -> Result<(), BoxError> {
    let mut walker = Walker {
        reader,
        limits,
        boxes: 0,
    };
    let mut offset = 0;
    let mut saw_moov = false;
    while offset < size {
        // At the top level a size of 0 means "to the end of the file".
        let header = walker.header(offset, size, true)?;
        if offset == 0 && &header.kind != b"ftyp" {
            return Err(BoxError::NoFtyp);
        }
        saw_moov |= &header.kind == b"moov";
        walker.walk_content(offset, &header, 1)?;
        offset += header.size;
    }
    if offset == 0 {
        return Err(BoxError::NoFtyp);
    }
    if !saw_moov {
        return Err(BoxError::NoMoov);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    fn ftyp() -> Vec<u8> {
        mp4_box(b"ftyp", b"isom\0\0\0\0")
    }

    fn check(bytes: &[u8]) -> Result<(), BoxError> {
        walk(
            &mut Cursor::new(bytes),
            bytes.len() as u64,
            WalkLimits::default(),
        )
    }

    #[test]
    fn a_well_formed_tree_passes() {
        let trak = mp4_box(b"trak", &mp4_box(b"tkhd", &[0; 84]));
        let moov = mp4_box(b"moov", &[mp4_box(b"mvhd", &[0; 100]), trak].concat());
        assert_eq!(
            check(&[ftyp(), moov, mp4_box(b"mdat", &[1; 50])].concat()),
            Ok(())
        );
    }

    #[test]
    fn a_zero_size_child_is_refused() {
        // The 32-byte file that makes MP4 parsers loop.
        let mut moov = 16u32.to_be_bytes().to_vec();
        moov.extend_from_slice(b"moov");
        moov.extend_from_slice(&0u32.to_be_bytes());
        moov.extend_from_slice(b"mvhd");
        let bytes = [ftyp(), moov].concat();
        assert_eq!(bytes.len(), 32);
        assert!(matches!(check(&bytes), Err(BoxError::BadSize { .. })));
    }

    #[test]
    fn children_shorter_than_a_header_or_past_the_parent_are_refused() {
        let mut short = 4u32.to_be_bytes().to_vec();
        short.extend_from_slice(b"free");
        let moov = mp4_box(b"moov", &[short, vec![0; 8]].concat());
        assert!(check(&[ftyp(), moov].concat()).is_err());

        let mut long = 64u32.to_be_bytes().to_vec();
        long.extend_from_slice(b"trak");
        let moov = mp4_box(b"moov", &[long, vec![0; 8]].concat());
        assert!(matches!(
            check(&[ftyp(), moov].concat()),
            Err(BoxError::Overflows { .. })
        ));
    }

    #[test]
    fn deep_nesting_and_box_floods_are_refused() {
        let mut nested = mp4_box(b"free", b"");
        for _ in 0..40 {
            nested = mp4_box(b"udta", &nested);
        }
        let moov = mp4_box(b"moov", &nested);
        assert!(matches!(
            check(&[ftyp(), moov].concat()),
            Err(BoxError::TooDeep { .. })
        ));

        let flood = mp4_box(b"free", b"").repeat(20_000);
        let moov = mp4_box(b"moov", &flood);
        assert!(matches!(
            check(&[ftyp(), moov].concat()),
            Err(BoxError::TooMany { .. })
        ));
    }

    #[test]
    fn a_64_bit_size_smaller_than_its_header_is_refused() {
        let mut moov = 1u32.to_be_bytes().to_vec();
        moov.extend_from_slice(b"moov");
        moov.extend_from_slice(&8u64.to_be_bytes());
        assert!(matches!(
            check(&[ftyp(), moov].concat()),
            Err(BoxError::BadSize { .. })
        ));
    }
}
