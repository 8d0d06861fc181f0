//! Bins of a count histogram (images per patient) that read at any size: a bounded number of
//! bars over consecutive whole numbers (no value left out, empty bins kept), and a few extreme
//! values sharing one last bar instead of stretching the axis far past where the rest sit.

/// The most ordinary bars of an images-per-patient histogram, in the workbench and in exported
/// charts.
pub const PATIENT_BINS: usize = 24;

/// A histogram of whole-number values, ready to draw as bars in order.
#[derive(Clone, Debug, PartialEq)]
pub struct CountBins {
    /// Each bar's name: `"3"`, or `"6–10"` when a bar spans several values, or `">19"` for the
    /// shared last bar.
    pub names: Vec<String>,
    /// Each bar's count (patients).
    pub counts: Vec<u64>,
    /// The shared last bar, when there is one.
    pub tail: Option<Tail>,
}

/// The values beyond the last ordinary bar, drawn together as one bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    /// The largest value of the ordinary bars: the tail holds values above it.
    pub above: u64,
    /// How many counted items (patients) it holds.
    pub count: u64,
    /// The largest value in it.
    pub max: u64,
}

impl Tail {
    /// What the last bar holds, for its caption: `1 patient with more than 5 images, up to 184`.
    pub fn describe(&self) -> String {
        format!(
            "{} patient{} with more than {} images, up to {}",
            self.count,
            if self.count == 1 { "" } else { "s" },
            self.above,
            self.max
        )
    }
}

/// Bins `histogram` (`(value, count)` pairs, any order, each value once) into at most
/// `max_bins` ordinary bars plus an optional tail. Values beyond the 97th percentile share the
/// tail when the largest is more than twice that percentile (plus five): NIH ChestX-ray14's
/// images per patient sit in 1–19 for 97% of patients and reach 184. Bars span 1, 2, 5, 10,
/// 20, 50, … values, whichever is the smallest that keeps within `max_bins`.
pub fn count_bins(histogram: &[(u64, u64)], max_bins: usize) -> CountBins {
    let mut sorted = histogram.to_vec();
    sorted.sort_unstable();
    let (Some(&(lo, _)), Some(&(max, _))) = (sorted.first(), sorted.last()) else {
        return CountBins {
            names: Vec::new(),
            counts: Vec::new(),
            tail: None,
        };
    };
    let total: u64 = sorted.iter().map(|(_, c)| c).sum();
    let mut seen = 0;
    let mut percentile = max;
    for &(n, c) in &sorted {
        seen += c;
        if seen as f64 >= 0.97 * total as f64 {
            percentile = n;
            break;
        }
    }
    let tail = (max > 2 * percentile + 5).then(|| Tail {
        above: percentile,
        count: sorted
            .iter()
            .filter(|(n, _)| *n > percentile)
            .map(|(_, c)| c)
            .sum(),
        max,
    });
    let hi = tail.map_or(max, |t| t.above);
    let span = hi - lo + 1;
    let max_bins = max_bins.max(1) as u64;
    let width = [1u64, 2, 5]
        .iter()
        .flat_map(|&m| (0..19).map(move |e| m * 10u64.pow(e)))
        .filter(|w| span.div_ceil(*w) <= max_bins)
        .min()
        .unwrap_or(span);
    let bins = span.div_ceil(width);
    let mut names = Vec::with_capacity(bins as usize + 1);
    let mut counts = Vec::with_capacity(bins as usize + 1);
    for b in 0..bins {
        let start = lo + b * width;
        let end = (start + width - 1).min(hi);
        names.push(if start == end {
            start.to_string()
        } else {
            format!("{start}–{end}")
        });
        counts.push(
            sorted
                .iter()
                .filter(|(n, _)| (start..=end).contains(n))
                .map(|(_, c)| c)
                .sum(),
        );
    }
    if let Some(t) = tail {
        names.push(format!(">{}", t.above));
        counts.push(t.count);
    }
    CountBins {
        names,
        counts,
        tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One patient with 190 images among patients with 1–15 shares a last bar instead of
    /// stretching the axis to 190.
    #[test]
    fn a_long_tail_shares_one_last_bar() {
        let mut h: Vec<(u64, u64)> = (1..=15).map(|n| (n, 10)).collect();
        h.push((190, 1));
        let bins = count_bins(&h, 24);
        assert_eq!(
            bins.tail,
            Some(Tail {
                above: 15,
                count: 1,
                max: 190
            })
        );
        assert_eq!(bins.names.len(), 16);
        assert_eq!(bins.names[0], "1");
        assert_eq!(bins.names[14], "15");
        assert_eq!(bins.names[15], ">15");
        assert_eq!(bins.counts[15], 1);
        assert_eq!(bins.counts.iter().sum::<u64>(), 151);
    }

    /// An ordinary histogram is drawn as it is, its empty values kept as empty bars.
    #[test]
    fn gaps_stay_as_empty_bars() {
        let bins = count_bins(&[(3, 2), (1, 4), (5, 7)], 24);
        assert_eq!(bins.names, ["1", "2", "3", "4", "5"]);
        assert_eq!(bins.counts, [4, 0, 2, 0, 7]);
        assert_eq!(bins.tail, None);
    }

    /// A wide spread of values is grouped into nice ranges, never more bars than asked for.
    #[test]
    fn a_wide_spread_is_grouped_into_ranges() {
        let h: Vec<(u64, u64)> = (1..=200).map(|n| (n, 1)).collect();
        let bins = count_bins(&h, 24);
        assert_eq!(bins.tail, None);
        assert_eq!(bins.names.len(), 20);
        assert_eq!(bins.names[0], "1–10");
        assert_eq!(bins.names[19], "191–200");
        assert!(bins.counts.iter().all(|&c| c == 10));
        assert!(count_bins(&h, 7).names.len() <= 7);
    }

    /// The tail's caption counts its patients in words that agree with the number.
    #[test]
    fn a_tail_describes_what_it_holds() {
        let one = Tail {
            above: 5,
            count: 1,
            max: 100_000,
        };
        assert_eq!(
            one.describe(),
            "1 patient with more than 5 images, up to 100000"
        );
        let three = Tail { count: 3, ..one };
        assert!(three.describe().starts_with("3 patients with"));
    }

    #[test]
    fn an_empty_histogram_has_no_bars() {
        let bins = count_bins(&[], 24);
        assert!(bins.names.is_empty() && bins.counts.is_empty() && bins.tail.is_none());
    }
}
