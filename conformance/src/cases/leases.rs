//! Consumer leases (v2). Every lease here names `event_type`: a lease
//! without it would take other clients' events in a shared account. Where a
//! lease must end, it is a 1-second lease and the case waits for it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{error_fields, ids, lease_id, problem, ts, Ctx, Endpoint};

/// Longer than a 1-second lease, counted from its answer.
async fn until_a_1s_lease_ends() {
    tokio::time::sleep(Duration::from_millis(1_150)).await;
}

pub async fn a_lease_takes_the_oldest_available_events_and_holds_them_until_leased_until(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    let created = cx.create_n(key, 12, &t).await;
    let created_at = ts(&cx.event(key, &created[11]).await["timestamp"]);
    let first = cx.lease(key, json!({"limit": 3, "event_type": t})).await;
    assert_eq!(ids(&first["events"]), created[..3]);
    assert_eq!(lease_id(&first).len(), 36, "{first}");
    // Default lease: 300 s from the server's clock at the lease, which is
    // after the events were created (and not long after).
    let from = ts(&first["leased_until"]) - chrono::Duration::seconds(300);
    assert!(
        from >= created_at && from - created_at < chrono::Duration::seconds(60),
        "leased_until {} for events created at {created_at}",
        first["leased_until"]
    );
    for e in first["events"].as_array().unwrap() {
        assert_eq!(e["lease_count"], 1, "{e}");
        assert_eq!(e["leased_until"], first["leased_until"], "{e}");
        assert_eq!(e["quarantined"], false);
        assert_eq!(e["delivered"], false);
    }
    let fetched = cx.event(key, &created[0]).await;
    assert_eq!(fetched["lease_count"], 1);
    assert_eq!(fetched["leased_until"], first["leased_until"]);
    // The default limit is 10; held events are skipped.
    let second = cx.lease(key, json!({"event_type": t})).await;
    assert_eq!(ids(&second["events"]), created[3..]);
    assert_ne!(second["lease_id"], first["lease_id"]);
    // Nothing left: no lease at all.
    let none = cx.lease(key, json!({"limit": 100, "event_type": t})).await;
    assert_eq!(
        none,
        json!({"lease_id": null, "leased_until": null, "events": []})
    );
    // An event that was never leased shows no lease.
    let fresh = cx
        .create_event(key, &json!({"event_type": t, "payload": {"fresh": 1}}))
        .await;
    let v = cx.event(key, &fresh).await;
    assert_eq!(
        (v["lease_count"].clone(), v["leased_until"].clone()),
        (json!(0), Value::Null)
    );
}

pub async fn two_concurrent_leases_never_share_an_event(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("c");
    let created = cx.create_n(key, 40, &t).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = cx.post_json("/inbox/lease", key, &json!({"limit": 10, "event_type": t}));
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await.unwrap();
            ids(&v["events"])
        }));
    }
    let mut seen: Vec<String> = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an event was leased twice: {seen:?}"
    );
    // Whatever the concurrent calls left (a call may return fewer when it
    // lost races) is leased by later calls: every event exactly once.
    loop {
        let v = cx.lease(key, json!({"limit": 100, "event_type": t})).await;
        let more = ids(&v["events"]);
        if more.is_empty() {
            break;
        }
        seen.extend(more);
    }
    let mut all = seen.clone();
    all.sort();
    let mut want = created.clone();
    want.sort();
    assert_eq!(all, want, "every event leased exactly once");
}

pub async fn an_ack_after_the_lease_ended_is_stale_only_for_events_leased_again_or_acknowledged(
    cx: &Ctx,
) {
    let key = &cx.creator;
    let t = cx.ty("s");
    let created = cx.create_n(key, 3, &t).await;
    let a = cx
        .lease(key, json!({"lease_seconds": 1, "event_type": t}))
        .await;
    assert_eq!(ids(&a["events"]), created);
    until_a_1s_lease_ends().await;
    // Lease B takes the first event again; the third is acknowledged by
    // DELETE meanwhile; the second nobody touched.
    let b_lease = cx.lease(key, json!({"limit": 1, "event_type": t})).await;
    assert_eq!(ids(&b_lease["events"]), created[..1]);
    assert_eq!(cx.ack(key, &created[2]).await, 204);
    let out = cx
        .settle(key, "ack", json!({"lease_id": lease_id(&a)}))
        .await;
    assert_eq!(
        out,
        json!({"acknowledged": [created[1]], "stale": [created[0], created[2]]})
    );
    // The event B holds was left alone; B acknowledges it.
    let v = cx.event(key, &created[0]).await;
    assert_eq!(v["delivered"], false);
    let out = cx
        .settle(key, "ack", json!({"lease_id": lease_id(&b_lease)}))
        .await;
    assert_eq!(out, json!({"acknowledged": [created[0]], "stale": []}));
    // An ack is a delivery, exactly as DELETE: readable, delivered, gone
    // from the inbox; a DELETE afterwards is 204 and keeps delivered_at.
    let v = cx.event(key, &created[1]).await;
    assert_eq!(v["delivered"], true);
    assert_eq!(v["leased_until"], Value::Null);
    let delivered_at = v["delivered_at"].clone();
    assert!(delivered_at.is_string());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(cx.ack(key, &created[1]).await, 204);
    assert_eq!(
        cx.event(key, &created[1]).await["delivered_at"],
        delivered_at
    );
    assert!(cx.walk_inbox(key, 50, Some(&t)).await.is_empty());
    // Acknowledging again: everything stale, nothing changes.
    let out = cx
        .settle(key, "ack", json!({"lease_id": lease_id(&a)}))
        .await;
    assert_eq!(out["acknowledged"], json!([]));
}

pub async fn ack_and_release_of_a_subset_leave_the_rest_of_the_lease_held(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("p");
    let e = cx.create_n(key, 5, &t).await;
    let l = cx.lease(key, json!({"limit": 4, "event_type": t})).await;
    let lid = lease_id(&l);
    assert_eq!(ids(&l["events"]), e[..4]);
    let out = cx
        .settle(
            key,
            "ack",
            json!({"lease_id": lid, "event_ids": [e[0], e[0], e[4]]}),
        )
        .await;
    // Listed once; an event of another lease (or none) is left alone.
    assert_eq!(out, json!({"acknowledged": [e[0]], "stale": [e[4]]}));
    let out = cx
        .settle(
            key,
            "release",
            json!({"lease_id": lid, "event_ids": [e[1]]}),
        )
        .await;
    assert_eq!(out, json!({"released": [e[1]], "stale": []}));
    // Released: available at once, its lease count kept.
    let v = cx.event(key, &e[1]).await;
    assert_eq!(v["leased_until"], Value::Null);
    assert_eq!(v["lease_count"], 1);
    let next = cx.lease(key, json!({"limit": 10, "event_type": t})).await;
    assert_eq!(ids(&next["events"]), [e[1].clone(), e[4].clone()]);
    assert_eq!(next["events"][0]["lease_count"], 2);
    // The rest of the first lease is still held by it.
    let out = cx.settle(key, "ack", json!({"lease_id": lid})).await;
    assert_eq!(
        out,
        json!({"acknowledged": [e[2], e[3]], "stale": [e[0], e[1]]})
    );
    // Releasing what is no longer held changes nothing.
    let out = cx.settle(key, "release", json!({"lease_id": lid})).await;
    assert_eq!(
        out,
        json!({"released": [], "stale": [e[0], e[1], e[2], e[3]]})
    );
    let v = cx.event(key, &e[1]).await;
    assert_eq!(
        v["leased_until"], next["leased_until"],
        "still the second lease's"
    );
}

pub async fn an_unknown_or_foreign_lease_id_is_404(cx: &Ctx) {
    let (mine, other) = (&cx.creator, &cx.other_account);
    let t = cx.ty("t");
    cx.create_event(other, &json!({"event_type": t, "payload": {}}))
        .await;
    let theirs = cx.lease(other, json!({"event_type": t})).await;
    for what in ["ack", "release"] {
        for lease_id in [
            uuid::Uuid::new_v4().to_string(),
            "not-a-lease".to_owned(),
            lease_id(&theirs),
        ] {
            let resp = cx
                .post_json(
                    &format!("/inbox/{what}"),
                    mine,
                    &json!({ "lease_id": lease_id }),
                )
                .send()
                .await
                .unwrap();
            problem(resp, 404, "NOT_FOUND").await;
        }
    }
    // The foreign lease was left alone.
    let out = cx
        .settle(other, "ack", json!({"lease_id": lease_id(&theirs)}))
        .await;
    assert_eq!(out["acknowledged"].as_array().unwrap().len(), 1);
}

pub async fn the_event_type_filter_applies_to_leases(cx: &Ctx) {
    let key = &cx.creator;
    let (ta, tb) = (cx.ty("a"), cx.ty("b"));
    let mut a = Vec::new();
    let mut other = Vec::new();
    for i in 0..6 {
        let t = if i % 2 == 0 { &ta } else { &tb };
        let id = cx
            .create_event(key, &json!({"event_type": t, "payload": {"i": i}}))
            .await;
        if i % 2 == 0 { &mut a } else { &mut other }.push(id);
    }
    let la = cx
        .lease(key, json!({"event_type": ta, "lease_seconds": 1}))
        .await;
    assert_eq!(ids(&la["events"]), a);
    assert_eq!(
        cx.lease(key, json!({"event_type": ta})).await["events"],
        json!([])
    );
    // Exact, case included.
    assert_eq!(
        cx.lease(key, json!({"event_type": cx.ty("A")})).await["events"],
        json!([])
    );
    // An ended lease of the type is available to the filter again.
    until_a_1s_lease_ends().await;
    let lb = cx.lease(key, json!({"limit": 2, "event_type": tb})).await;
    assert_eq!(ids(&lb["events"]), other[..2]);
    let la2 = cx.lease(key, json!({"limit": 1, "event_type": ta})).await;
    assert_eq!(ids(&la2["events"]), a[..1]);
    let rest_a = cx.lease(key, json!({"limit": 100, "event_type": ta})).await;
    assert_eq!(ids(&rest_a["events"]), a[1..]);
    let rest_b = cx.lease(key, json!({"limit": 100, "event_type": tb})).await;
    assert_eq!(ids(&rest_b["events"]), other[2..]);
}

/// The long poll is answered within about a second of the ingest, whichever
/// instance takes the POST (at once on the same one, by its once-a-second
/// look at the store on another).
pub async fn a_long_poll_wakes_up_when_an_event_is_ingested(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("w");
    let req = cx.post_json(
        "/inbox/lease",
        key,
        &json!({"wait_seconds": 10, "event_type": t}),
    );
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        (resp.json::<Value>().await.unwrap(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = cx
        .create_event(key, &json!({"event_type": t, "payload": {}}))
        .await;
    let posted = started.elapsed();
    let (v, took) = waiting.await.unwrap();
    assert_eq!(ids(&v["events"]), [id]);
    assert!(
        took < posted + Duration::from_millis(1_800),
        "answered {took:?}, posted at {posted:?}"
    );
}

pub async fn a_long_poll_answers_empty_when_its_wait_ends(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("w");
    // A held event is not available either.
    cx.create_event(key, &json!({"event_type": t, "payload": {}}))
        .await;
    let started = Instant::now();
    cx.lease(key, json!({"event_type": t})).await;
    // What a request costs on its way there and back.
    let round_trip = started.elapsed();
    let started = Instant::now();
    let v = cx
        .lease(key, json!({"wait_seconds": 1, "event_type": t}))
        .await;
    let took = started.elapsed();
    assert_eq!(v["events"], json!([]));
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(
        took < Duration::from_secs(2) + round_trip,
        "never longer than wait + 1 s: {took:?} (a request takes {round_trip:?})"
    );
    // wait_seconds 0 answers at once.
    let started = Instant::now();
    cx.lease(key, json!({"wait_seconds": 0, "event_type": t}))
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(500) + round_trip,
        "{:?}",
        started.elapsed()
    );
}

pub async fn a_long_poll_finds_a_lease_that_ends_while_it_waits(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("w");
    let id = cx
        .create_event(key, &json!({"event_type": t, "payload": {}}))
        .await;
    cx.lease(key, json!({"lease_seconds": 1, "event_type": t}))
        .await;
    let req = cx.post_json(
        "/inbox/lease",
        key,
        &json!({"wait_seconds": 5, "event_type": t}),
    );
    let v = req.send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(ids(&v["events"]), [id]);
    assert_eq!(v["events"][0]["lease_count"], 2);
}

pub async fn v1_walks_and_delete_keep_working_beside_leases(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("v");
    let e = cx.create_n(key, 6, &t).await;
    let l = cx.lease(key, json!({"limit": 3, "event_type": t})).await;
    // The plain inbox lists leased events too, in order, with their lease.
    for limit in [1, 2, 50] {
        assert_eq!(cx.walk_inbox(key, limit, Some(&t)).await, e);
    }
    let page: Value = cx
        .get(
            &format!("/inbox?limit=50&event_type={}", crate::enc(&t)),
            key,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["leased_until"], l["leased_until"]);
    assert_eq!(page["events"][0]["lease_count"], 1);
    assert_eq!(page["events"][3]["leased_until"], Value::Null);
    // DELETE acknowledges leased and unleased events alike.
    assert_eq!(cx.ack(key, &e[1]).await, 204);
    assert_eq!(cx.ack(key, &e[4]).await, 204);
    assert_eq!(
        cx.walk_inbox(key, 2, Some(&t)).await,
        [e[0].clone(), e[2].clone(), e[3].clone(), e[5].clone()]
    );
    let out = cx
        .settle(key, "ack", json!({"lease_id": lease_id(&l)}))
        .await;
    assert_eq!(out, json!({"acknowledged": [e[0], e[2]], "stale": [e[1]]}));
    let next = cx.lease(key, json!({"event_type": t})).await;
    assert_eq!(ids(&next["events"]), [e[3].clone(), e[5].clone()]);
    assert_eq!(
        cx.walk_inbox(key, 10, Some(&t)).await,
        [e[3].clone(), e[5].clone()]
    );
}

pub async fn an_event_deleted_while_leased_takes_no_place_in_later_leases(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("d");
    let e = cx.create_n(key, 4, &t).await;
    cx.lease(
        key,
        json!({"limit": 1, "lease_seconds": 1, "event_type": t}),
    )
    .await;
    assert_eq!(cx.ack(key, &e[0]).await, 204);
    // Its lease has ended too; it is delivered, so never leased again, and
    // the oldest three that are available fill the lease.
    until_a_1s_lease_ends().await;
    let l = cx.lease(key, json!({"limit": 3, "event_type": t})).await;
    assert_eq!(ids(&l["events"]), e[1..]);
    assert_eq!(
        cx.lease(key, json!({"event_type": t})).await["events"],
        json!([])
    );
}

pub async fn a_viewer_gets_403_on_the_lease_routes_before_the_body_is_read(cx: &Ctx) {
    let viewer = &cx.viewer;
    // Each on a connection of its own: the server answers before reading
    // the body, and then closes the connection.
    let post =
        |path: &str, body: reqwest::Body| super::transport::post_oversize(cx, path, viewer, body);
    for path in ["/inbox/lease", "/inbox/ack", "/inbox/release"] {
        let cases = [
            cx.unpooled
                .post(cx.url(path))
                .bearer_auth(viewer)
                .header("content-type", "text/plain")
                .body("x"),
            post(path, "{not json".into()),
            post(path, r#"{"limit":0,"lease_id":7}"#.into()),
            post(path, vec![b' '; 600 * 1024].into()),
        ];
        for req in cases {
            let p = problem(req.send().await.unwrap(), 403, "FORBIDDEN").await;
            assert!(
                p["detail"].as_str().unwrap().contains("role"),
                "{path}: {p}"
            );
        }
    }
    let resp = cx
        .client
        .post(cx.url("/events/not-an-id/requeue"))
        .bearer_auth(viewer)
        .send()
        .await
        .unwrap();
    problem(resp, 403, "FORBIDDEN").await;
    // A viewer may still read the quarantine.
    assert_eq!(
        cx.get("/inbox?state=quarantined", viewer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

pub async fn lease_ack_and_release_bodies_are_validated(cx: &Ctx) {
    let key = &cx.creator;
    let bad = |path: &'static str, body: &'static str| cx.post_raw(path, key, body).send();
    let p = problem(
        bad(
            "/inbox/lease",
            r#"{"limit":101,"lease_seconds":0,"wait_seconds":21,"event_type":"","x":1}"#,
        )
        .await
        .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(
        error_fields(&p),
        ["x", "limit", "lease_seconds", "wait_seconds", "event_type"]
    );
    for (body, field) in [
        (r#"{"limit":2.5}"#, "limit"),
        (r#"{"limit":"5"}"#, "limit"),
        (r#"{"lease_seconds":3601}"#, "lease_seconds"),
        (r#"{"wait_seconds":-1}"#, "wait_seconds"),
        (r#"{"event_type":7}"#, "event_type"),
        (r#"{"limit":1,"limit":2}"#, "limit"),
        ("[]", "body"),
        ("{", "body"),
    ] {
        let p = problem(
            bad("/inbox/lease", body).await.unwrap(),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(error_fields(&p), [field], "{body}");
    }
    for path in ["/inbox/ack", "/inbox/release"] {
        for (body, fields) in [
            ("{}", vec!["lease_id"]),
            (r#"{"lease_id":null}"#, vec!["lease_id"]),
            (
                r#"{"lease_id":"00000000-0000-4000-8000-000000000000","event_ids":[]}"#,
                vec!["event_ids"],
            ),
            (
                r#"{"lease_id":"00000000-0000-4000-8000-000000000000","event_ids":["x"],"z":1}"#,
                vec!["z", "event_ids[0]"],
            ),
            (
                r#"{"lease_id":"00000000-0000-4000-8000-000000000000","lease_id":"x"}"#,
                vec!["lease_id"],
            ),
        ] {
            let p = problem(bad(path, body).await.unwrap(), 400, "VALIDATION_ERROR").await;
            assert_eq!(error_fields(&p), fields, "{path} {body}");
        }
    }
    // Valid shape, no such lease: 404.
    let resp = bad(
        "/inbox/ack",
        r#"{"lease_id":"00000000-0000-4000-8000-000000000000"}"#,
    )
    .await
    .unwrap();
    problem(resp, 404, "NOT_FOUND").await;
}
