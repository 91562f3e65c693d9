//! Page and page-size rules shared by every paginated list.

/// Why a page request was rejected, per parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPagination {
    #[error("page must be 1 or more")]
    Page,
    #[error("limit must be between {min} and {max}", min = Pagination::MIN_LIMIT, max = Pagination::MAX_LIMIT)]
    Limit,
}

impl InvalidPagination {
    /// The query parameter at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Page => "page",
            Self::Limit => "limit",
        }
    }
}

/// A validated page request: `page` ≥ 1 and `limit` in 1–100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pagination {
    page: u32,
    limit: u32,
}

impl Pagination {
    pub const DEFAULT_LIMIT: u32 = 20;
    pub const MIN_LIMIT: u32 = 1;
    pub const MAX_LIMIT: u32 = 100;
    /// The highest page number accepted (so every offset fits a signed
    /// 64-bit SQL integer with room to spare).
    pub const MAX_PAGE: u32 = i32::MAX as u32;

    /// Validates the optional `page` and `limit` query parameters; absent
    /// ones take their defaults (page 1, limit 20).
    pub fn new(page: Option<i64>, limit: Option<i64>) -> Result<Self, InvalidPagination> {
        let page = match page {
            None => 1,
            Some(page) => u32::try_from(page)
                .ok()
                .filter(|page| (1..=Self::MAX_PAGE).contains(page))
                .ok_or(InvalidPagination::Page)?,
        };
        let limit = match limit {
            None => Self::DEFAULT_LIMIT,
            Some(limit) => u32::try_from(limit)
                .ok()
                .filter(|limit| (Self::MIN_LIMIT..=Self::MAX_LIMIT).contains(limit))
                .ok_or(InvalidPagination::Limit)?,
        };
        Ok(Self { page, limit })
    }

    /// The first page with the default size.
    pub fn first() -> Self {
        Self {
            page: 1,
            limit: Self::DEFAULT_LIMIT,
        }
    }

    /// The 1-based page number.
    pub fn page(&self) -> u32 {
        self.page
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// How many rows precede this page.
    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.limit)
    }
}

impl Default for Pagination {
    fn default() -> Self {
        Self::first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_first_page_of_twenty() {
        let page = Pagination::new(None, None).unwrap();
        assert_eq!((page.page(), page.limit(), page.offset()), (1, 20, 0));
    }

    #[test]
    fn offset_counts_previous_pages() {
        let page = Pagination::new(Some(3), Some(10)).unwrap();
        assert_eq!(page.offset(), 20);
    }

    #[test]
    fn rejects_out_of_range_values() {
        assert_eq!(Pagination::new(Some(0), None), Err(InvalidPagination::Page));
        assert_eq!(
            Pagination::new(Some(-1), None),
            Err(InvalidPagination::Page)
        );
        assert_eq!(
            Pagination::new(Some(i64::MAX), None),
            Err(InvalidPagination::Page)
        );
        assert_eq!(
            Pagination::new(None, Some(0)),
            Err(InvalidPagination::Limit)
        );
        assert_eq!(
            Pagination::new(None, Some(101)),
            Err(InvalidPagination::Limit)
        );
        assert!(Pagination::new(Some(1), Some(100)).is_ok());
        assert!(Pagination::new(Some(1), Some(1)).is_ok());
    }
}
