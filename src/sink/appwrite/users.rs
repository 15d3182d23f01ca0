//! Users into Appwrite Users with their existing password hashes: created through the endpoint of
//! the hash's algorithm, then labels and prefs. An existing user (409) on a re-run is not an error:
//! its labels and prefs are set again.

use serde_json::{Value, json};

use super::{AppwriteClient, AppwriteError, ClientKind};

pub use crate::mapping::spec::APPWRITE_HASH_ALGORITHMS as ALGORITHMS;

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
    /// E.164 phone number.
    pub phone: Option<String>,
    pub email_verified: Option<bool>,
    /// Enabled (`true`) or blocked; `None` leaves the default (enabled).
    pub enabled: Option<bool>,
}

/// The pref cutover sets on a user it blocks because the user's row is rejected now (a re-run
/// or delta run): the run that writes the user again unblocks it when the mapping does not say
/// its status. Users the application blocked itself carry no such mark and stay blocked.
pub const BLOCKED_MARK: &str = "cutoverBlocked";

/// The pref every user cutover imports carries, its value the entity's name: which users of
/// a project are cutover's. Verification, `--sync-deletes` and rollback touch only those — the
/// project's own users (signed up in the application, created by hand) are no rows of the source.
pub const IMPORTED_MARK: &str = "cutoverImported";

/// Whether `user` (as Appwrite returns it) was imported by cutover as one of `entity`.
pub fn imported_into(user: &Value, entity: &str) -> bool {
    user["prefs"][IMPORTED_MARK].as_str() == Some(entity)
}

/// The id of a user holding `email`, if any.
pub async fn holder_of_email(
    client: &AppwriteClient,
    email: &str,
) -> Result<Option<String>, AppwriteError> {
    let q = super::tables::query_string(&[
        json!({ "method": "equal", "attribute": "email", "values": [email] }),
        json!({ "method": "limit", "values": [1] }),
    ]);
    let v = client
        .call(reqwest::Method::GET, &format!("/users?{q}"), None)
        .await?;
    Ok(v["users"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|u| u["$id"].as_str())
        .map(str::to_string))
}

/// Whether the user was created now or already existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Created,
    Existed,
}

/// Creates the user with its hash unchanged, or — when it exists (a re-run) — brings it to the same
/// state: a changed hash or email cannot be patched without re-hashing, so such a user is deleted
/// and created again; name, phone, verification, status, labels and prefs are set every time.
pub async fn import_user(
    client: &AppwriteClient,
    u: &ImportUser,
) -> Result<Imported, AppwriteError> {
    if !ALGORITHMS.contains(&u.algorithm.as_str()) {
        return Err(AppwriteError::client(
            ClientKind::Unsupported("unsupported_algorithm"),
            format!(
                "Appwrite imports {} hashes, not {}",
                ALGORITHMS.join(", "),
                u.algorithm
            ),
        ));
    }
    let id = &u.id;
    let mut created = create(client, u).await?;
    let mut blocked_by_cutover = false;
    if created == Imported::Existed {
        let existing = match client
            .call(reqwest::Method::GET, &format!("/users/{id}"), None)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_missing() => {
                // The 409 came from another user holding this email (or phone).
                return Err(AppwriteError::http(
                    409,
                    "user_email_already_exists",
                    format!("another Appwrite user already has the email {}", u.email),
                ));
            }
            Err(e) => return Err(e),
        };
        blocked_by_cutover = existing["prefs"][BLOCKED_MARK] == true && existing["status"] == false;
        if existing["password"].as_str() != Some(u.hash.as_str())
            || existing["hash"].as_str() != Some(u.algorithm.as_str())
            || existing["email"].as_str() != Some(u.email.as_str())
        {
            // Re-created under an email another user holds, it could not be created again:
            // the account would be gone (found while answering the fourteenth tester's U9).
            if let Some(other) = holder_of_email(client, &u.email)
                .await?
                .filter(|other| other != id)
            {
                return Err(AppwriteError::http(
                    409,
                    "user_email_already_exists",
                    format!(
                        "another Appwrite user ({other}) already has the email {}; the user keeps its older email",
                        u.email
                    ),
                ));
            }
            client
                .call(reqwest::Method::DELETE, &format!("/users/{id}"), None)
                .await?;
            created = create(client, u).await?;
            if created == Imported::Existed {
                return Err(AppwriteError::http(
                    409,
                    "user_already_exists",
                    format!("another Appwrite user already has the email {}", u.email),
                ));
            }
            created = Imported::Existed;
        } else if existing["name"].as_str() != Some(u.name.as_str()) {
            client
                .call(
                    reqwest::Method::PATCH,
                    &format!("/users/{id}/name"),
                    Some(&json!({ "name": u.name })),
                )
                .await?;
        }
    }
    if let Some(phone) = &u.phone {
        client
            .call(
                reqwest::Method::PATCH,
                &format!("/users/{id}/phone"),
                Some(&json!({ "number": phone })),
            )
            .await?;
    }
    if let Some(v) = u.email_verified {
        client
            .call(
                reqwest::Method::PATCH,
                &format!("/users/{id}/verification"),
                Some(&json!({ "emailVerification": v })),
            )
            .await?;
    }
    // Unblocked when cutover blocked it and the mapping does not say (a mapped status is set).
    let enabled = u.enabled.or(blocked_by_cutover.then_some(true));
    if let Some(enabled) = enabled {
        client
            .call(
                reqwest::Method::PATCH,
                &format!("/users/{id}/status"),
                Some(&json!({ "status": enabled })),
            )
            .await?;
    }
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

async fn create(client: &AppwriteClient, u: &ImportUser) -> Result<Imported, AppwriteError> {
    let mut body = json!({ "userId": u.id, "email": u.email, "password": u.hash, "name": u.name });
    if let (Some(b), Some(o)) = (body.as_object_mut(), u.options.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    match client
        .call(
            reqwest::Method::POST,
            &format!("/users/{}", u.algorithm),
            Some(&body),
        )
        .await
    {
        Ok(_) => Ok(Imported::Created),
        Err(e) if e.status() == Some(409) && e.kind() == "user_already_exists" => {
            Ok(Imported::Existed)
        }
        Err(e) => Err(e),
    }
}
