//! Users into Appwrite Users with their existing password hashes: created through the endpoint of
//! the hash's algorithm, then labels and prefs. An existing user (409) on a re-run is not an error:
//! its labels and prefs are set again.

use serde_json::{Value, json};

use super::{AppwriteClient, AppwriteError};

/// Hash algorithms Appwrite imports (the route segment of `POST /users/{algorithm}`).
pub const ALGORITHMS: &[&str] = &[
    "bcrypt",
    "argon2",
    "md5",
    "sha",
    "phpass",
    "scrypt",
    "scrypt-modified",
];

/// One user to import.
#[derive(Debug, Clone)]
pub struct ImportUser {
    pub id: String,
    pub email: String,
    pub name: String,
    /// The stored hash, unchanged.
    pub hash: String,
    pub algorithm: String,
    /// Extra options some algorithms need (salt, cost…), sent as they are.
    pub options: Value,
    pub labels: Vec<String>,
    pub prefs: Value,
}

/// Whether the user was created now or already existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Created,
    Existed,
}

pub async fn import_user(
    client: &AppwriteClient,
    u: &ImportUser,
) -> Result<Imported, AppwriteError> {
    if !ALGORITHMS.contains(&u.algorithm.as_str()) {
        return Err(AppwriteError {
            status: 0,
            kind: "unsupported_algorithm".into(),
            message: format!(
                "Appwrite imports {} hashes, not {}",
                ALGORITHMS.join(", "),
                u.algorithm
            ),
            wait: None,
        });
    }
    let mut body = json!({ "userId": u.id, "email": u.email, "password": u.hash, "name": u.name });
    if let (Some(b), Some(o)) = (body.as_object_mut(), u.options.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    let created = match client
        .call(
            reqwest::Method::POST,
            &format!("/users/{}", u.algorithm),
            Some(&body),
        )
        .await
    {
        Ok(_) => Imported::Created,
        Err(e) if e.status == 409 && e.kind == "user_already_exists" => Imported::Existed,
        Err(e) => return Err(e),
    };
    let id = &u.id;
    client
        .call(
            reqwest::Method::PUT,
            &format!("/users/{id}/labels"),
            Some(&json!({ "labels": u.labels })),
        )
        .await?;
    client
        .call(
            reqwest::Method::PATCH,
            &format!("/users/{id}/prefs"),
            Some(&json!({ "prefs": u.prefs })),
        )
        .await?;
    Ok(created)
}
