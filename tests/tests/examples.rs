//! examples/seed-app/ is what the sandbox generates for the seed app (no root needed).
//! Regenerate with `cargo xtask manifests`.
use std::path::Path;

#[test]
fn seed_app_examples_match_the_sandbox() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed-app");
    for (file, yaml) in lb_tests::manifests::seed_manifests() {
        let committed = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("examples/seed-app/{file}: {e}"));
        assert_eq!(
            committed, yaml,
            "examples/seed-app/{file} differs from the sandbox's: run `cargo xtask manifests`"
        );
    }
}
