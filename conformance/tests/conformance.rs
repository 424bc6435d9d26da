//! The conformance suite: the golden cases ranked by every runtime EdgeRec ships.

use edgerec_conformance::{check_ranking, golden_bundle, golden_cases, max_abs_diff};
use edgerec_core::{Ranking, load_tract_ranker};

fn assert_all_cases(runtime: &str, mut rank: impl FnMut(&edgerec_core::RankRequest) -> Ranking) {
    let cases = golden_cases();
    assert!(cases.len() >= 10, "the golden set lost cases");
    let mut worst: f32 = 0.0;
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let got = rank(&case.request);
            worst = worst.max(max_abs_diff(case, &got));
            check_ranking(case, &got).err()
        })
        .collect();
    assert!(failures.is_empty(), "{runtime} disagrees with the golden cases:\n{}", failures.join("\n"));
    eprintln!("{runtime}: {} golden cases match, max |score - reference| = {worst:e}", cases.len());
}

#[test]
fn tract_native_matches_golden_cases() {
    let (manifest, model) = golden_bundle();
    let mut ranker = load_tract_ranker(&manifest, &model).expect("golden bundle loads");
    assert_all_cases("tract native", |request| ranker.rank(request).expect("golden request ranks"));
}
