//! Plain-text tables of stored rows, for `demo` and `enrich` to show people
//! what was written.

use crate::store::Snapshot;

/// Renders rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let rule: String = format!(
        "|{}|\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    let mut out = line(headers.to_vec());
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn or_dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

/// The three enriched tables, as people read them.
pub fn snapshot(snapshot: &Snapshot) -> String {
    let sessions: Vec<Vec<String>> = snapshot
        .sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.to_string(),
                or_dash(&s.channel_type),
                or_dash(&s.channel_name),
                or_dash(&s.customer),
                or_dash(&s.detail),
                if s.missing {
                    "missing".into()
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    let customers: Vec<Vec<String>> = snapshot
        .customers
        .iter()
        .map(|c| {
            vec![
                c.user_type.to_string(),
                c.user_no.clone(),
                or_dash(&c.username),
            ]
        })
        .collect();
    let agents: Vec<Vec<String>> = snapshot
        .pending_agents
        .iter()
        .map(|a| {
            vec![
                a.session_id.to_string(),
                a.position.to_string(),
                a.user_id.to_string(),
                or_dash(&a.user_no),
                or_dash(&a.username),
            ]
        })
        .collect();
    format!(
        "message_sessions\n{}\ncustomers\n{}\nsession_pending_agents\n{}",
        table(
            &[
                "session_id",
                "channel_type",
                "channel_name",
                "customer (type/no)",
                "detail",
                "missing"
            ],
            &sessions
        ),
        table(&["user_type", "user_no", "username"], &customers),
        table(
            &[
                "session_id",
                "position",
                "agent_user_id",
                "agent_user_no",
                "agent_username"
            ],
            &agents
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let t = table(&["id", "name"], &[vec!["1".into(), "Alice Johnson".into()]]);
        assert_eq!(
            t,
            "| id | name          |\n|----|---------------|\n| 1  | Alice Johnson |\n"
        );
    }
}
