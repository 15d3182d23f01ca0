//! The sample library schema of `tests/new_schema.rs` (not the registry), shared with the
//! Appwrite tests: tables, rows, mapping files and the pipeline.

use super::World;

pub const SCHEMA: &str = r#"
CREATE TABLE authors (author_code text PRIMARY KEY, full_name text NOT NULL, born date, meta jsonb);
CREATE TABLE books (
  isbn text PRIMARY KEY,
  author_code text REFERENCES authors,
  title text NOT NULL,
  subtitle text,
  price numeric(14,4),
  weight numeric,
  tags text[],
  pages integer,
  published timestamp,
  added timestamptz NOT NULL,
  format char(1)
);
CREATE TABLE chapters (isbn text REFERENCES books, n integer, title text, PRIMARY KEY (isbn, n));
CREATE TABLE loans (book_isbn text, member_id bigint, loaned_at timestamptz, PRIMARY KEY (book_isbn, member_id));

INSERT INTO authors VALUES
  ('achebe', 'Chinua Achebe', '1930-11-16', '{"country": "Nigeria", "awards": ["Man Booker International"]}'),
  ('Zadie', 'Zadie Smith', '1975-10-25', NULL),
  ('adichie', 'Chimamanda Ngozi Adichie', '1977-09-15', '{"country": "Nigeria"}');
INSERT INTO books VALUES
  ('978-0-385-47454-2', 'achebe', 'Things Fall Apart', NULL, 12.5000, 0.25, '{classic,novel}', 209, '1958-06-01 10:00:00', '2020-01-01 00:00:00.123+00', 'P'),
  ('978-0-14-118693-6', 'achebe', 'No Longer at Ease', 'Second novel', 9999999999.9999, 0.3, '{}', 194, NULL, '2020-01-02 00:00:00+00', 'H'),
  ('978-0-241-14419-0', 'Zadie', 'White Teeth', NULL, 8.9900, 0.12345678901234567890123, NULL, 448, '2000-01-27 09:30:00', '2020-01-03 00:00:00+00', 'P'),
  ('978-0-00-720028-3', 'adichie', 'Half of a Yellow Sun', NULL, 14.0000, 0.5, '{war,"  historical "}', 433, NULL, '2020-01-04 00:00:00.000001+00', 'E'),
  ('978-0-00-000000-0', 'adichie', 'Things Fall Apart', 'duplicate title', 1.0, 1, NULL, 10, NULL, '2020-01-05 00:00:00+00', 'P');
INSERT INTO chapters VALUES
  ('978-0-385-47454-2', 2, 'Two'), ('978-0-385-47454-2', 1, 'One'), ('978-0-241-14419-0', 1, 'Archie');
INSERT INTO loans VALUES
  ('978-0-385-47454-2', 7, '2024-05-01 12:00:00+00'), ('978-0-385-47454-2', 9, '2024-05-02 12:00:00+00'),
  ('978-0-241-14419-0', 7, '2024-06-01 08:30:00+00');
"#;

pub const AUTHORS: &str = r#"
version = 1
name = "authors"
[source]
table = "authors"
key = ["author_code"]
[[field]]
path = "name"
column = "full_name"
[[field]]
path = "born"
column = "born"
[[field]]
path = "profile"
column = "meta"
"#;

pub const BOOKS: &str = r#"
version = 1
name = "books"
collection = "catalogue"
[source]
table = "books"
key = ["isbn"]
[[field]]
path = "author"
column = "author_code"
reference = "authors"
validate = { required = true }
[[field]]
path = "title.main"
column = "title"
[[field]]
path = "title.full"
columns = ["title", "subtitle"]
transform = [{ concat = { sep = ": " } }]
[[field]]
path = "price"
column = "price"
[[field]]
path = "weightKg"
column = "weight"
type = "double"
[[field]]
path = "tags"
column = "tags"
transform = ["trim"]
default = []
[[field]]
path = "pages"
column = "pages"
type = "long"
[[field]]
path = "published"
column = "published"
timezone = "+01:00"
[[field]]
path = "added"
column = "added"
[[field]]
path = "format"
column = "format"
transform = [{ map = { P = "paperback", H = "hardcover", "*" = "other" } }]
[[field]]
path = "source"
value = "legacy-library"
[[embed]]
path = "chapters"
table = "chapters"
foreign_key = "isbn"
order_by = ["n"]
[[embed.field]]
path = "n"
column = "n"
[[embed.field]]
path = "title"
column = "title"
"#;

pub const LOANS: &str = r#"
version = 1
name = "loans"
[source]
table = "loans"
key = ["book_isbn", "member_id"]
[[field]]
path = "book"
column = "book_isbn"
reference = "books"
[[field]]
path = "at"
column = "loaned_at"
"#;

pub const PIPELINE: &str = r#"
version = 1
name = "library"
mappings_dir = "mappings"
[[stage]]
name = "people"
entities = ["authors"]
[[stage]]
name = "catalogue"
entities = ["books", "loans"]
depends_on = ["people"]
"#;

pub fn write_files(w: &World) -> std::path::PathBuf {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/authors.toml"), AUTHORS).unwrap();
    std::fs::write(dir.join("mappings/books.toml"), BOOKS).unwrap();
    std::fs::write(dir.join("mappings/loans.toml"), LOANS).unwrap();
    std::fs::write(dir.join("library.toml"), PIPELINE).unwrap();
    dir.join("library.toml")
}
