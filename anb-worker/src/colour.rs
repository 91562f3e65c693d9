//! How the filter graph brings an SDR source to the showcase colour: BT.709 matrix, limited
//! range, 8-bit 4:2:0 (HDR sources are tone-mapped instead, see `pipeline::tone_mapping`).
//!
//! The scale to 720p is the costly filter, and FFmpeg's scaler is much slower when it also
//! changes the matrix: it then takes a slow path through RGB. So the scaler only
//! resizes (and converts the range where that costs nothing), and a BT.601 matrix is
//! converted afterwards, on the 720p picture, by the `colorspace` filter.

use ffmpeg_next::{color, filter, format::Pixel};

/// The colour conversion chosen for one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColourRoute {
    /// The source is BT.709 already: the scaler keeps the matrix and converts a full range
    /// to the limited one (a per-sample step, no RGB round trip).
    Keep,
    /// The source is BT.601 (declared, or undeclared, which the scaler also takes for
    /// BT.601): the scaler keeps matrix and range, `colorspace` converts both at 720p.
    AfterScale {
        /// The source uses the full (JPEG) range.
        full_range: bool,
    },
    /// The scaler converts from the matrix and range each frame declares: any other
    /// matrix (SMPTE 240M, BT.2020 in SDR, FCC…), or an FFmpeg without `colorspace`.
    Scaler,
}

impl ColourRoute {
    /// The route for a source with this matrix, range and pixel format;
    /// `colorspace_filter` says whether this FFmpeg has the `colorspace` filter.
    pub(crate) fn choose(
        space: color::Space,
        range: color::Range,
        pixel: Pixel,
        colorspace_filter: bool,
    ) -> Self {
        let full_range = range == color::Range::JPEG
            || matches!(
                pixel,
                Pixel::YUVJ420P | Pixel::YUVJ422P | Pixel::YUVJ444P | Pixel::YUVJ440P
            );
        match space {
            color::Space::BT709 => Self::Keep,
            color::Space::Unspecified | color::Space::BT470BG | color::Space::SMPTE170M
                if colorspace_filter =>
            {
                Self::AfterScale { full_range }
            }
            _ => Self::Scaler,
        }
    }

    /// The route for `source`'s decoder, asking this FFmpeg for `colorspace`.
    pub(crate) fn for_source(decoder: &ffmpeg_next::decoder::Video) -> Self {
        let colorspace_filter = filter::find("colorspace").is_some();
        if !colorspace_filter {
            tracing::debug!("this FFmpeg lacks the colorspace filter: the scaler converts");
        }
        Self::choose(
            decoder.color_space(),
            decoder.color_range(),
            decoder.format(),
            colorspace_filter,
        )
    }

    /// The filters from the scale to 720p to the 8-bit 4:2:0 BT.709 limited-range picture,
    /// each followed by a comma.
    pub(crate) fn filters(self, width: u32, height: u32) -> String {
        let scale = format!("scale={width}:{height}:flags=bicubic");
        match self {
            Self::Keep => format!("{scale}:out_range=tv,format=yuv420p,"),
            // Only the matrix changes, as the scaler changed it: primaries and transfer
            // are declared equal on both sides, so `colorspace` does no gamut mapping and
            // takes its direct YUV-to-YUV path. A full range stays full through the
            // scaler and `colorspace` converts it in the same step as the matrix.
            Self::AfterScale { full_range } => {
                let range = if full_range { "pc" } else { "tv" };
                format!(
                    "{scale}:out_range={range},format=yuv420p,\
                     colorspace=ispace=bt470bg:irange={range}:iprimaries=bt709:itrc=bt709:\
                     space=bt709:range=tv:primaries=bt709:trc=bt709:format=yuv420p,"
                )
            }
            // Without `colorspace` (FFmpeg built without it) this is also the BT.601 route.
            Self::Scaler => format!("{scale}:out_color_matrix=bt709:out_range=tv,format=yuv420p,"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(space: color::Space, range: color::Range, pixel: Pixel) -> ColourRoute {
        ColourRoute::choose(space, range, pixel, true)
    }

    #[test]
    fn bt601_and_undeclared_matrices_are_converted_after_the_scale_by_colorspace() {
        for space in [
            color::Space::Unspecified,
            color::Space::BT470BG,
            color::Space::SMPTE170M,
        ] {
            let filters =
                route(space, color::Range::Unspecified, Pixel::YUV420P).filters(1280, 720);
            assert_eq!(
                filters,
                "scale=1280:720:flags=bicubic:out_range=tv,format=yuv420p,\
                 colorspace=ispace=bt470bg:irange=tv:iprimaries=bt709:itrc=bt709:\
                 space=bt709:range=tv:primaries=bt709:trc=bt709:format=yuv420p,",
                "{space:?}"
            );
            let scale = filters.split(',').next().unwrap();
            assert!(!scale.contains("color_matrix"), "{space:?}: {scale}");
        }
    }

    #[test]
    fn a_full_range_bt601_source_keeps_its_range_through_the_scaler() {
        for (range, pixel) in [
            (color::Range::JPEG, Pixel::YUV420P),
            (color::Range::Unspecified, Pixel::YUVJ420P),
        ] {
            let chosen = route(color::Space::SMPTE170M, range, pixel);
            assert_eq!(chosen, ColourRoute::AfterScale { full_range: true });
            let filters = chosen.filters(406, 720);
            assert!(
                filters.starts_with("scale=406:720:flags=bicubic:out_range=pc,format=yuv420p,"),
                "{filters}"
            );
            assert!(filters.contains("irange=pc"), "{filters}");
            assert!(filters.contains(":range=tv"), "{filters}");
        }
    }

    #[test]
    fn a_bt709_source_gets_no_matrix_conversion() {
        for range in [color::Range::MPEG, color::Range::JPEG] {
            let filters = route(color::Space::BT709, range, Pixel::YUV420P).filters(1280, 720);
            assert_eq!(
                filters,
                "scale=1280:720:flags=bicubic:out_range=tv,format=yuv420p,"
            );
        }
    }

    #[test]
    fn other_matrices_and_an_ffmpeg_without_colorspace_leave_it_to_the_scaler() {
        let scaler =
            "scale=1280:720:flags=bicubic:out_color_matrix=bt709:out_range=tv,format=yuv420p,";
        assert_eq!(
            route(color::Space::SMPTE240M, color::Range::MPEG, Pixel::YUV420P).filters(1280, 720),
            scaler
        );
        assert_eq!(
            ColourRoute::choose(
                color::Space::Unspecified,
                color::Range::Unspecified,
                Pixel::YUV420P,
                false
            )
            .filters(1280, 720),
            scaler
        );
    }

    #[test]
    fn this_ffmpeg_has_the_colorspace_filter() {
        ffmpeg_next::init().unwrap();
        assert!(filter::find("colorspace").is_some());
    }
}
