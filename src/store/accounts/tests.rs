use super::audit::insert_audit;
use super::*;

fn open(dir: &Path) -> Accounts {
    let mut conn = Connection::open(dir.join("a.db")).unwrap();
    super::super::schema::migrate(&mut conn).unwrap();
    Accounts::open(&dir.join("a.db"), Synchronous::Normal).unwrap()
}

const LIMITS: SessionLimits = SessionLimits {
    idle: Duration::from_secs(1800),
    absolute: Duration::from_secs(12 * 3600),
};

#[test]
fn the_last_admin_cannot_be_disabled_but_a_second_one_can() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let t = Timestamp::from_unix_ms(1_000_000);
    assert!(!a.has_admin().unwrap());
    let first = a.create_user("Ann", "h", Role::Admin, "setup", t).unwrap();
    assert!(a.has_admin().unwrap());
    assert!(matches!(
        a.set_disabled(first.id, true),
        Err(AccountError::LastAdmin)
    ));
    assert!(matches!(
        a.create_user("ann", "h", Role::Nurse, "x", t),
        Err(AccountError::Taken(_))
    ));
    let second = a.create_user("bob", "h", Role::Admin, "Ann", t).unwrap();
    assert!(a.set_disabled(first.id, true).unwrap().disabled);
    assert!(matches!(
        a.set_disabled(second.id, true),
        Err(AccountError::LastAdmin)
    ));
}

#[test]
fn sessions_end_when_idle_at_their_absolute_limit_and_with_their_account() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let t0 = Timestamp::from_unix_ms(10_000_000);
    let u = a.create_user("ann", "h", Role::Nurse, "t", t0).unwrap();
    let h = [7u8; 32];
    a.create_session(&h, u.id, "c", "127.0.0.1", t0).unwrap();
    // Used every 20 minutes: stays alive past the idle limit in total.
    let mut t = t0;
    for _ in 0..5 {
        t = t.saturating_add(Duration::from_secs(20 * 60));
        assert!(a.session(&h, LIMITS, t).unwrap().is_some(), "at {t:?}");
    }
    // Idle for 30 minutes: gone, and stays gone.
    let late = t.saturating_add(Duration::from_secs(30 * 60));
    assert_eq!(a.session(&h, LIMITS, late).unwrap(), None);
    assert_eq!(a.session(&h, LIMITS, t).unwrap(), None);

    let h2 = [8u8; 32];
    a.create_session(&h2, u.id, "c", "x", t0).unwrap();
    let limits = SessionLimits {
        idle: Duration::from_secs(12 * 3600),
        absolute: Duration::from_secs(3600),
    };
    assert!(
        a.session(&h2, limits, t0.saturating_add(Duration::from_secs(3599)))
            .unwrap()
            .is_some()
    );
    assert_eq!(
        a.session(&h2, limits, t0.saturating_add(Duration::from_secs(3600)))
            .unwrap(),
        None
    );

    let h3 = [9u8; 32];
    a.create_session(&h3, u.id, "c", "x", t0).unwrap();
    a.create_user("boss", "h", Role::Admin, "t", t0).unwrap();
    a.set_disabled(u.id, true).unwrap();
    assert_eq!(a.session(&h3, LIMITS, t0).unwrap(), None);
}

#[test]
fn a_one_time_code_works_once_and_not_after_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let t = Timestamp::from_unix_ms(5_000_000);
    let later = t.saturating_add(Duration::from_secs(3600));
    a.create_code(&[1; 32], CodeKind::Setup, None, later)
        .unwrap();
    assert_eq!(a.use_code(&[1; 32], CodeKind::SignIn, t).unwrap(), None);
    assert_eq!(a.use_code(&[2; 32], CodeKind::Setup, t).unwrap(), None);
    assert_eq!(
        a.use_code(&[1; 32], CodeKind::Setup, t).unwrap(),
        Some(None)
    );
    assert_eq!(a.use_code(&[1; 32], CodeKind::Setup, t).unwrap(), None);
    a.create_code(&[3; 32], CodeKind::Setup, None, later)
        .unwrap();
    assert_eq!(a.use_code(&[3; 32], CodeKind::Setup, later).unwrap(), None);
}

#[test]
fn failures_are_counted_per_key_and_survive_a_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let t = Timestamp::from_unix_ms(50_000_000);
    for _ in 0..3 {
        a.record_failure(&["user:ann", "ip:10.0.0.9"], t, Timestamp::from_unix_ms(0))
            .unwrap();
    }
    drop(a);
    let a = Accounts::open(&dir.path().join("a.db"), Synchronous::Normal).unwrap();
    let since = t.saturating_sub(Duration::from_secs(900));
    assert_eq!(a.failures_since("user:ann", since).unwrap(), 3);
    assert_eq!(a.failures_since("ip:10.0.0.9", since).unwrap(), 3);
    assert_eq!(a.failures_since("user:bob", since).unwrap(), 0);
    assert_eq!(a.failures_since("user:ann", t).unwrap(), 0);
    a.clear_failures("user:ann").unwrap();
    assert_eq!(a.failures_since("user:ann", since).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_audit_entry_is_committed_when_audit_returns_though_entries_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let db = dir.path().join("a.db");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (a, db) = (a.clone(), db.clone());
            tokio::spawn(async move {
                let target = format!("/residents/{i}");
                a.audit(AuditEntry {
                    at: Timestamp::from_unix_ms(1_000 + i),
                    who: "ann".into(),
                    action: "view resident".into(),
                    target: target.clone(),
                    client: "127.0.0.1".into(),
                    status: 200,
                })
                .await
                .unwrap();
                // Committed: another connection sees it at once.
                let other = Connection::open(&db).unwrap();
                let n: i64 = other
                    .query_row(
                        "SELECT COUNT(*) FROM audit_log WHERE target = ?1",
                        [&target],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(n, 1, "{target}");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.audit_count().unwrap(), 200);
    // The newest first, as the audit page reads them.
    assert_eq!(a.audit_page(0, 1).unwrap().len(), 1);
}

#[test]
fn a_page_refreshing_itself_does_not_keep_its_session_alive() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let t0 = Timestamp::from_unix_ms(10_000_000);
    let after = |s: u64| t0.saturating_add(Duration::from_secs(s));
    let u = a.create_user("ann", "h", Role::Carer, "t", t0).unwrap();
    let h = [7u8; 32];
    a.create_session(&h, u.id, "c", "127.0.0.1", t0).unwrap();
    let idle = LIMITS.idle.as_secs();
    // A tablet left on a live page: it refreshes every 30 s until the idle
    // limit, each refresh answered, none counted as use.
    let mut t = 30;
    while t < idle {
        assert!(
            a.session_unused(&h, LIMITS, after(t)).unwrap().is_some(),
            "at {t} s"
        );
        t += 30;
    }
    assert_eq!(a.session_unused(&h, LIMITS, after(idle)).unwrap(), None);
    assert_eq!(a.live_session(&h, LIMITS, after(idle)), None);
    assert_eq!(
        a.session(&h, LIMITS, after(idle)).unwrap(),
        None,
        "signed out after the idle limit"
    );
    // Staff using the page do keep it alive.
    let h2 = [8u8; 32];
    a.create_session(&h2, u.id, "c", "127.0.0.1", t0).unwrap();
    assert!(a.session(&h2, LIMITS, after(idle - 10)).unwrap().is_some());
    assert!(
        a.session_unused(&h2, LIMITS, after(idle + 10))
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_session_is_marked_used_at_most_every_touch_interval_and_its_idle_limit_holds_to_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let db = Connection::open(dir.path().join("a.db")).unwrap();
    let last_seen = || -> i64 {
        db.query_row("SELECT last_seen_ms FROM sessions", [], |r| r.get(0))
            .unwrap()
    };
    let t0 = Timestamp::from_unix_ms(10_000_000);
    let after = |s: u64| t0.saturating_add(Duration::from_secs(s));
    let u = a.create_user("ann", "h", Role::Carer, "t", t0).unwrap();
    let h = [5u8; 32];
    a.create_session(&h, u.id, "c", "127.0.0.1", t0).unwrap();
    // Used within TOUCH_EVERY of the last mark: not written.
    let just_under = TOUCH_EVERY.as_secs() - 1;
    assert!(a.session(&h, LIMITS, after(just_under)).unwrap().is_some());
    assert_eq!(last_seen(), t0.unix_ms());
    // Used TOUCH_EVERY after it: marked.
    let touch = TOUCH_EVERY.as_secs();
    assert!(a.session(&h, LIMITS, after(touch)).unwrap().is_some());
    assert_eq!(last_seen(), after(touch).unix_ms());
    // Last used just under TOUCH_EVERY after that mark: the idle limit counts
    // from the mark, so it ends at most TOUCH_EVERY early, never late.
    assert!(
        a.session(&h, LIMITS, after(touch + just_under))
            .unwrap()
            .is_some()
    );
    let idle = LIMITS.idle.as_secs();
    let end = after(touch + idle);
    assert!(
        a.session(&h, LIMITS, end.saturating_sub(Duration::from_millis(1)))
            .unwrap()
            .is_some()
    );
    // (That use was TOUCH_EVERY past the mark, so it marked again.)
    assert_eq!(last_seen(), end.unix_ms() - 1);
    let h2 = [6u8; 32];
    a.create_session(&h2, u.id, "c", "127.0.0.1", t0).unwrap();
    assert!(a.session(&h2, LIMITS, after(just_under)).unwrap().is_some());
    assert_eq!(
        a.session(&h2, LIMITS, after(idle)).unwrap(),
        None,
        "idle from the last mark (t0), though used {just_under} s later"
    );
}

#[test]
fn a_remembered_session_answers_as_the_table_would_and_is_forgotten_by_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let t0 = Timestamp::from_unix_ms(20_000_000);
    let at = |ms: u64| t0.saturating_add(Duration::from_millis(ms));
    let u = a.create_user("ann", "h", Role::Nurse, "t", t0).unwrap();
    let h = [1u8; 32];
    a.create_session(&h, u.id, "c", "x", t0).unwrap();
    // Not remembered before the table has been asked.
    assert_eq!(a.live_session(&h, LIMITS, t0), None);
    let s = a.session(&h, LIMITS, t0).unwrap().unwrap();
    assert_eq!(a.live_session(&[2u8; 32], LIMITS, t0), None);
    // Within TOUCH_EVERY of the mark: the same answer as the table.
    let touch = u64::try_from(TOUCH_EVERY.as_millis()).unwrap();
    for ms in [0, 1, 30_000, touch - 1] {
        assert_eq!(a.live_session(&h, LIMITS, at(ms)), Some(s.clone()), "{ms}");
        assert_eq!(a.session(&h, LIMITS, at(ms)).unwrap(), Some(s.clone()));
    }
    // From TOUCH_EVERY on, the table is asked (and marks the session used).
    assert_eq!(a.live_session(&h, LIMITS, at(touch)), None);
    assert!(a.session(&h, LIMITS, at(touch)).unwrap().is_some());
    assert!(a.live_session(&h, LIMITS, at(touch + 1)).is_some());
    // A clock set back is not trusted.
    assert_eq!(a.live_session(&h, LIMITS, at(touch - 1)), None);
    // An idle limit shorter than TOUCH_EVERY holds without the table.
    let short = SessionLimits {
        idle: Duration::from_secs(10),
        ..LIMITS
    };
    assert!(a.live_session(&h, short, at(touch + 9_999)).is_some());
    assert_eq!(a.live_session(&h, short, at(touch + 10_000)), None);

    // Every change to accounts or sessions forgets what was remembered.
    type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let changes: [Change<'_>; 4] = [
        ("password", Box::new(|| a.set_password(u.id, "h2").unwrap())),
        (
            "disabled",
            Box::new(|| drop(a.set_disabled(u.id, true).unwrap())),
        ),
        ("signed out", Box::new(|| a.delete_session(&h).unwrap())),
        (
            "purged",
            Box::new(|| {
                let none = SessionLimits {
                    idle: Duration::ZERO,
                    absolute: Duration::ZERO,
                };
                a.purge_sessions(none, at(touch + 2)).unwrap();
            }),
        ),
    ];
    for (what, change) in changes {
        a.set_disabled(u.id, false).unwrap();
        a.delete_session(&h).unwrap();
        a.create_session(&h, u.id, "c", "x", at(touch + 1)).unwrap();
        assert!(
            a.session(&h, LIMITS, at(touch + 1)).unwrap().is_some(),
            "{what}"
        );
        assert!(
            a.live_session(&h, LIMITS, at(touch + 2)).is_some(),
            "{what}"
        );
        change();
        assert_eq!(a.live_session(&h, LIMITS, at(touch + 2)), None, "{what}");
        assert_eq!(
            a.session(&h, LIMITS, at(touch + 2)).unwrap(),
            None,
            "{what}"
        );
    }
}

fn entry(target: &str) -> AuditEntry {
    AuditEntry {
        at: Timestamp::now(),
        who: "anonymous".into(),
        action: "sign in failed".into(),
        target: target.into(),
        client: "192.0.2.7".into(),
        status: 401,
    }
}

/// Regression (issue 17, finding 2): a 2,000,000-character name was logged
/// whole, and every failed sign-in or refused link was a row of its own.
#[tokio::test]
async fn anonymous_events_are_tallied_and_fields_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let huge = "x".repeat(2_000_000);
    for _ in 0..1000 {
        a.audit_anonymous(entry(&huge));
    }
    a.audit(AuditEntry {
        who: "ann".into(),
        action: "view residents overview".into(),
        ..entry(&huge)
    })
    .await
    .unwrap();
    a.flush_audit_tallies().await.unwrap();
    let rows = a.audit_page(0, 100).unwrap();
    // One tally (plus, if the queue was ever full, one "not itemised" row)
    // and the signed-in view.
    assert!(rows.len() <= 3, "{}", rows.len());
    let tally = rows
        .iter()
        .find(|r| r.action.starts_with("sign in failed"))
        .unwrap();
    assert!(
        tally.action.contains("times within 60 s"),
        "{}",
        tally.action
    );
    for r in &rows {
        assert!(
            r.target.chars().count() <= AUDIT_FIELD_CHARS[2],
            "{}",
            r.target.len()
        );
    }
    let size = std::fs::metadata(dir.path().join("a.db")).unwrap().len();
    assert!(size < 1024 * 1024, "database grew to {size} bytes");
}

#[test]
fn old_rows_and_rows_over_budget_are_exported_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let exports = dir.path().join(AUDIT_EXPORT_DIR);
    let now = Timestamp::now();
    let old = now.saturating_sub(AUDIT_RETENTION + Duration::from_secs(86_400));
    {
        let c = a.conn.lock().unwrap();
        for i in 0..10 {
            insert_audit(
                &c,
                &AuditEntry {
                    at: old,
                    ..entry(&format!("old{i}"))
                },
            )
            .unwrap();
        }
        for i in 0..1000 {
            insert_audit(
                &c,
                &AuditEntry {
                    at: now,
                    ..entry(&format!("new{i:04};=1"))
                },
            )
            .unwrap();
        }
    }
    let mut c = a.conn.lock().unwrap();
    // A large budget: only the expired rows go.
    let done = maintain(&mut c, &exports, now, AUDIT_BUDGET_BYTES).unwrap();
    assert_eq!(done.purged, 10);
    let files: Vec<_> = std::fs::read_dir(&exports).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(text.lines().count(), 11, "{text}");
    assert!(text.contains("\"old9\""), "{text}");
    // A budget of 40 KB (20 KB for rows, about 100 bytes each): the oldest
    // go, exported first, and what is left fits.
    let done = maintain(&mut c, &exports, now, 40_000).unwrap();
    assert!(done.purged > 700, "{done:?}");
    let left: i64 = c
        .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left as u64 + done.purged, 1000);
    let newest_kept: String = c
        .query_row(
            "SELECT target FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(newest_kept, "new0999;=1");
    // The exports are over their 20 KB half by now: the oldest file goes,
    // never the newest.
    assert_eq!(done.exports_removed, 1);
    let files: Vec<_> = std::fs::read_dir(&exports).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(text.contains("new0000;'=1"), "{}", &text[..200]);
}

/// A page's own refreshes (live.js) repeat a view already written: one row per
/// user and page in `REFRESH_WINDOW`, a row again after it; a person's own view
/// is always written.
#[tokio::test]
async fn a_page_refreshing_itself_writes_one_row_per_user_and_page_in_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let t0 = Timestamp::now();
    let view = |who: &str, target: &str, at: Timestamp| AuditEntry {
        at,
        who: who.into(),
        action: "view residents overview".into(),
        target: target.into(),
        client: "192.0.2.7".into(),
        status: 200,
    };
    // The nurse opens the overview; the page then refreshes itself 500 times.
    a.audit(view("ann", "/", t0)).await.unwrap();
    let mut written = 0;
    for i in 1..=500u64 {
        let at = t0.saturating_add(Duration::from_millis(i * 200));
        written += u32::from(a.audit_refresh(view("ann", "/", at)).await.unwrap());
    }
    assert_eq!(written, 0, "refreshes of a view already written");
    // Another nurse's refresh, and another page, are views of their own.
    assert!(a.audit_refresh(view("bob", "/", t0)).await.unwrap());
    assert!(a.audit_refresh(view("ann", "/alerts", t0)).await.unwrap());
    // After the window, the refresh is written again (once).
    let later = t0.saturating_add(REFRESH_WINDOW + Duration::from_secs(1));
    assert!(a.audit_refresh(view("ann", "/", later)).await.unwrap());
    assert!(!a.audit_refresh(view("ann", "/", later)).await.unwrap());
    // A person's view is always a row, refresh window or not.
    a.audit(view("ann", "/", later)).await.unwrap();
    let rows = a.audit_page(0, 1000).unwrap();
    let ann_overview = rows
        .iter()
        .filter(|r| r.who == "ann" && r.target == "/")
        .count();
    assert_eq!(ann_overview, 3, "{rows:?}");
    assert_eq!(rows.len(), 5, "{rows:?}");
}
