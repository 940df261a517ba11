//! `schemas/` documents every table exactly as `model` defines it. Regenerate the pages with
//! `TWINLAKE_BLESS=1 cargo test -p twinlake-tests schema_docs`.

use std::path::PathBuf;

use twinlake_model::Table;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

#[test]
fn schema_docs_match_the_arrow_schemas() {
    let bless = std::env::var_os("TWINLAKE_BLESS").is_some();
    let mut stale = Vec::new();
    for table in Table::ALL {
        let path = schemas_dir().join(format!("{}.md", table.name()));
        let expected = table.markdown();
        if bless {
            std::fs::write(&path, &expected).expect("write schema page");
            continue;
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        if actual != expected {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date (run TWINLAKE_BLESS=1 cargo test -p twinlake-tests schema_docs): {stale:?}"
    );
}

#[test]
fn schema_docs_list_every_column_of_every_table() {
    for table in Table::ALL {
        let page = table.markdown();
        let schema = table.schema();
        for field in schema.fields() {
            assert!(
                page.contains(&format!("| `{}` |", field.name())),
                "{table}: {}",
                field.name()
            );
        }
    }
    let index =
        std::fs::read_to_string(schemas_dir().join("README.md")).expect("schemas/README.md");
    for table in Table::ALL {
        assert!(
            index.contains(&format!("({}.md)", table.name())),
            "schemas/README.md lacks {table}"
        );
    }
}
