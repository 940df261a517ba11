//! Builds the console's list of examples from the SQL files of `queries/` at the repository's
//! root, so that the binary carries them and a new example needs no code.

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let queries = manifest.join("../../queries");
    println!("cargo:rerun-if-changed={}", queries.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&queries)
        .expect("the queries/ directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    let mut source = String::from("pub(crate) const EXAMPLES: &[(&str, &str)] = &[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let name = file.file_name().expect("a file name").to_string_lossy();
        let path = file.canonicalize().expect("the example's path");
        writeln!(
            source,
            "    ({name:?}, include_str!({:?})),",
            path.display()
        )
        .expect("a string");
    }
    source.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("examples.rs");
    std::fs::write(out, source).expect("writing examples.rs");
}
