//! The `berth config` commands and `--help`, run through the real binary.

use std::io::Write;

use crate::cli::{berth, stderr, stdout};

/// Writes `text` to a temporary `.toml` file that lives as long as the returned handle.
fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("create temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// Runs `berth config check` on `text`, expecting failure; returns stderr.
fn check_fails(text: &str) -> String {
    let file = config_file(text);
    let path = file.path().to_str().expect("utf-8 temp path");
    let output = berth(&["config", "check", "--config", path]);
    assert_eq!(output.status.code(), Some(1), "stdout: {}", stdout(&output));
    assert!(stdout(&output).is_empty(), "stdout: {}", stdout(&output));
    let err = stderr(&output);
    assert!(err.contains(path), "stderr should name the file: {err}");
    err
}

#[test]
fn default_template_passes_check() {
    let output = berth(&["config", "default"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let template = stdout(&output);
    assert!(template.contains("max_manifest_size"), "{template}");

    let file = config_file(&template);
    let path = file.path().to_str().expect("utf-8 temp path");
    let output = berth(&["config", "check", "--config", path]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.starts_with(&format!("ok: {path}\n")), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:5000\""), "{out}");
    assert!(out.contains("[storage]") && out.contains("[api]"), "{out}");
}

#[test]
fn check_prints_the_effective_config() {
    let file = config_file("[api]\ndelete_enabled = false\n");
    let path = file.path().to_str().expect("utf-8 temp path");
    let output = berth(&["config", "check", "--config", path]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("delete_enabled = false"), "{out}");
    assert!(out.contains("max_manifest_size = \"4MiB\""), "{out}");
    assert!(out.contains("commit = true"), "{out}");
}

#[test]
fn check_rejects_unknown_key_naming_it() {
    let err = check_fails("[storage]\ncommitt = true\n");
    assert!(err.contains("committ"), "{err}");
}

#[test]
fn check_rejects_unknown_table_naming_it() {
    let err = check_fails("[garbage_collection]\nenabled = true\n");
    assert!(err.contains("garbage_collection"), "{err}");
}

#[test]
fn check_rejects_bad_duration_naming_the_key() {
    let err = check_fails("[storage]\nupload_timeout = \"soon\"\n");
    assert!(err.contains("upload_timeout"), "{err}");
}

#[test]
fn check_rejects_zero_duration_naming_the_key() {
    let err = check_fails("[storage]\nupload_timeout = \"0s\"\n");
    assert!(err.contains("storage.upload_timeout"), "{err}");
}

#[test]
fn check_rejects_bad_size_naming_the_key() {
    let err = check_fails("[api]\nmax_manifest_size = \"huge\"\n");
    assert!(err.contains("max_manifest_size"), "{err}");
}

#[test]
fn check_rejects_out_of_range_size_naming_the_key() {
    let err = check_fails("[api]\nmax_manifest_size = \"1GiB\"\n");
    assert!(err.contains("api.max_manifest_size"), "{err}");
    assert!(err.contains("between 1KiB and 64MiB"), "{err}");
}

#[test]
fn check_rejects_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml");
    let path = path.to_str().expect("utf-8 temp path");
    let output = berth(&["config", "check", "--config", path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("absent.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_with_invalid_config_exits_1() {
    let file = config_file("[api]\nmax_manifest_size = \"1B\"\n");
    let path = file.path().to_str().expect("utf-8 temp path");
    let output = berth(&["serve", "--config", path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("api.max_manifest_size"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn help_mentions_the_common_flags() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let output = berth(args);
        assert!(output.status.success(), "{}", stderr(&output));
        let help = stdout(&output);
        for flag in ["--config", "--listen", "--root"] {
            assert!(
                help.contains(flag),
                "`berth {args:?}` lacks {flag}:\n{help}"
            );
        }
    }
}

#[test]
fn config_help_explains_its_subcommands() {
    let output = berth(&["config", "--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let help = stdout(&output);
    assert!(help.contains("default") && help.contains("check"), "{help}");
    let output = berth(&["config", "check", "--help"]);
    assert!(stdout(&output).contains("--config"), "{}", stdout(&output));
}
