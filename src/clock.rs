//! Wall-clock timestamps for names (run ids, job ids), without a date crate.

/// `yyyymmddThhmmss` in UTC for seconds since the epoch (civil-from-days, no date crate).
pub fn utc_compact(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_compact_known_dates() {
        assert_eq!(utc_compact(0), "19700101T000000");
        assert_eq!(utc_compact(1_795_370_704), "20261122T180504");
        assert_eq!(utc_compact(951_782_400), "20000229T000000");
    }
}
