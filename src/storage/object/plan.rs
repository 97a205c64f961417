//! The arithmetic of multipart uploads, kept apart so that it can be tested alone: which
//! ranges of an existing object are copied when an upload resumes, and how large an
//! upload may grow with a given part size.

use std::ops::Range;

/// S3's smallest part, except the last one of an upload.
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part number.
pub const MAX_PARTS: u32 = 10_000;
/// The largest range copied as one part: S3 allows 5 GiB; a margin keeps every range
/// below it whatever a server counts in.
pub const MAX_COPY: u64 = 4 << 30;

/// The ranges of an object of `size` bytes that become the first parts of a new upload
/// when it resumes: as few as `max` allows, of nearly equal sizes, so that each is at least
/// [`MIN_PART`] (none of them is the upload's last part). Empty below [`MIN_PART`]: such an
/// object is rewritten from its own bytes instead.
pub fn copy_ranges(size: u64, max: u64) -> Vec<Range<u64>> {
    if size < MIN_PART {
        return Vec::new();
    }
    // With max >= 2 * MIN_PART, size / n >= max / 2 >= MIN_PART whenever n > 1.
    let max = max.max(2 * MIN_PART);
    let n = size.div_ceil(max);
    let (each, extra) = (size / n, size % n);
    let mut at = 0;
    (0..n)
        .map(|i| {
            let len = each + u64::from(i < extra);
            let r = at..at + len;
            at += len;
            r
        })
        .collect()
}

/// The largest upload that `copied` copied parts and parts of `part_size` bytes can make:
/// what is refused beyond it is refused with the reason.
pub fn largest_upload(copied_bytes: u64, copied_parts: u32, part_size: u64) -> u64 {
    let left = u64::from(MAX_PARTS.saturating_sub(copied_parts));
    copied_bytes.saturating_add(left.saturating_mul(part_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(size: u64, max: u64) -> Vec<Range<u64>> {
        let r = copy_ranges(size, max);
        if size >= MIN_PART {
            assert_eq!(r.first().map(|r| r.start), Some(0));
            assert_eq!(r.last().map(|r| r.end), Some(size));
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            for p in &r {
                let len = p.end - p.start;
                assert!(len >= MIN_PART, "{len} below the minimum in {r:?}");
                assert!(len <= max.max(2 * MIN_PART), "{len} above {max}");
            }
        }
        r
    }

    #[test]
    fn small_objects_are_not_copied() {
        assert!(check(0, MAX_COPY).is_empty());
        assert!(check(MIN_PART - 1, MAX_COPY).is_empty());
    }

    #[test]
    fn an_object_below_the_range_limit_is_one_copy() {
        assert_eq!(check(MIN_PART, MAX_COPY), vec![0..MIN_PART]);
        assert_eq!(check(3 << 30, MAX_COPY), vec![0..3 << 30]);
    }

    #[test]
    fn large_objects_are_split_evenly_and_never_below_the_minimum() {
        let size = (9 << 30) + 7;
        let r = check(size, MAX_COPY);
        assert_eq!(r.len(), 3);
        // Just past a multiple of the limit: the split is even, not limit + crumb.
        let r = check(MAX_COPY + 1, MAX_COPY);
        assert_eq!(r.len(), 2);
        // 156 GiB, the most 10,000 parts of 16 MiB reach.
        assert_eq!(check(156 << 30, MAX_COPY).len(), 39);
        for size in [MIN_PART, 2 * MIN_PART + 1, 31 << 20, (12 << 20) + 3] {
            check(size, 10 << 20);
        }
    }

    #[test]
    fn the_largest_upload() {
        assert_eq!(largest_upload(0, 0, 16 << 20), 10_000 * (16 << 20));
        assert_eq!(largest_upload(100, 1, 10), 100 + 9_999 * 10);
        assert_eq!(largest_upload(0, 20_000, 10), 0);
    }
}
