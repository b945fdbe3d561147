//! The statistics every figure goes through: medians over repeated runs, nearest-rank percentiles
//! over cold-start samples, rounding to the precision a figure is shown (and judged) at, and the
//! formatting of ratios and verdicts.

/// The median; the mean of the two middle values for an even count. `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let sorted = sorted(values);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The nearest-rank percentile: the smallest sample with at least `p` percent of the samples at or
/// below it (rank `ceil(p/100 * n)`). Exact, from the samples themselves: a few hundred cold starts
/// need no histogram. `None` for no values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let sorted = sorted(values);
    if sorted.is_empty() {
        return None;
    }
    // The rank is computed in hundredths of a sample so that p·n/100 landing on a whole number
    // (p50 of 40) is not pushed to the next rank by a floating-point remainder.
    let hundredths = (p * sorted.len() as f64).round() as usize;
    let rank = hundredths.div_ceil(100).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// `value` rounded to `decimals` places the way it is printed (halves to even, as C's printf, which
/// the figures in docs/benchmarks.md went through): a figure is judged at the precision it is shown,
/// so that a verdict never disagrees with the number next to it.
pub fn round_to(value: f64, decimals: usize) -> f64 {
    format!("{value:.decimals$}").parse().unwrap_or(value)
}

/// `a / b` as "1.23x"; "-" when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".to_owned()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

/// The verdict column: "met" or "MISSED".
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        // Sorted as numbers, not as text ("10" < "9").
        assert_eq!(median(&[10.0, 9.0, 100.0]), Some(10.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let forty: Vec<f64> = (1..=40).map(f64::from).collect();
        assert_eq!(percentile(&forty, 50.0), Some(20.0));
        assert_eq!(percentile(&forty, 99.0), Some(40.0));
        let five = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&five, 50.0), Some(3.0));
        assert_eq!(percentile(&five, 99.0), Some(5.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
        assert_eq!(percentile(&ten, 90.0), Some(9.0));
        assert_eq!(percentile(&ten, 0.0), Some(1.0));
        assert_eq!(percentile(&ten, 100.0), Some(10.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn rounding_is_the_printed_one() {
        assert_eq!(round_to(12.345_678, 2), 12.35);
        assert_eq!(round_to(2000.5, 0), 2000.0);
        assert_eq!(round_to(2001.5, 0), 2002.0);
        assert_eq!(round_to(1999.6, 0), 2000.0);
    }

    #[test]
    fn ratios_milliseconds_and_verdicts() {
        assert_eq!(ratio(1150.0, 1000.0), "1.15x");
        assert_eq!(ratio(2.0, 3.0), "0.67x");
        assert_eq!(ratio(1.0, 0.0), "-");
        assert_eq!(ms(1234.0), "1.23");
        assert_eq!(ms(445.0), "0.45");
        assert_eq!(verdict(true), "met");
        assert_eq!(verdict(false), "MISSED");
    }
}
