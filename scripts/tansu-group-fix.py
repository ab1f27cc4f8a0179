#!/usr/bin/env python3
"""Fixes to tansu 0.6.0's consumer group coordinator, applied to an unpacked
tansu-broker-0.6.0 crate before scripts/services.sh builds the broker the Kafka tests use.

Without them a member that dies without leaving (SIGKILL) is dropped from its group, but
the group keeps its generation, its leader and its stored assignment: the member whose
heartbeat noticed is told to rejoin and gets its old partitions back, the other members
are never told, and the dead member's partitions stay assigned to nobody (seen in the
scale-out kill test: the dead member's partitions were still unconsumed 25 s later). With
a short session timeout the group instead kept re-forming every few seconds, because a
follower's join waits 3 s and is recorded as contact from before that wait.

1. A heartbeat first drops the members whose session expired, then answers: a formed group
   that lost a member starts forming again with the next generation and no leader, so
   every remaining member's next heartbeat tells it to rejoin (Kafka's behaviour).
2. A join counts as contact at the time it is handled (after the follower's pause).
3. The join loop reads the clock again after that pause.
4. That pause, which only lets the leader join and sync before a follower asks, is 500 ms
   instead of 3 s (a follower that still comes too early is told to rejoin by its sync).
   Together with the session timeout it bounds how fast a dead member's partitions move.
5. A forming group whose leader's session expired takes no sync until a join has named a
   new leader (else a follower's empty sync formed the group with nothing assigned).
6. A forming group that drops a member moves one generation on, so an assignment made
   for the old member list is refused and the members join again.

Each edit checks that it applied exactly once; the script fails loudly otherwise.
Usage: tansu-group-fix.py <path to tansu-broker-0.6.0>
"""

import pathlib
import sys

from tansu_patch import edit


def main() -> None:
    path = pathlib.Path(sys.argv[1]) / "src/coordinator/group/administrator.rs"
    text = path.read_text()
    if "runnel: group fix" in text:
        return

    # 1a. A formed group that drops an expired member forms again, one generation on.
    text = edit(
        text,
        r"(Self::Forming\(Inner \{\s*session_timeout_ms: inner\.session_timeout_ms,\s*"
        r"rebalance_timeout_ms: inner\.rebalance_timeout_ms,\s*members: inner\.members,\s*)"
        r"generation_id: inner\.generation_id,",
        r"\1generation_id: inner.generation_id + 1, // runnel: group fix",
        "formed group re-forms with the next generation",
    )
    # 1b. The heartbeat handler drops expired members before it answers.
    text = edit(
        text,
        r"let \(mut wrapper, body\) = wrapper\s*"
        r"\.heartbeat\(now, group_id, generation_id, member_id, group_instance_id\)\s*"
        r"\.await;\s*if group_instance_id\.is_none\(\) \{\s*"
        r"wrapper = wrapper\.missed_heartbeat\(group_id, now\);\s*\}",
        "let wrapper = if group_instance_id.is_none() {\n"
        "                wrapper.missed_heartbeat(group_id, now)\n"
        "            } else {\n"
        "                wrapper\n"
        "            };\n"
        "            let (wrapper, body) = wrapper\n"
        "                .heartbeat(now, group_id, generation_id, member_id, group_instance_id)\n"
        "                .await;",
        "heartbeat drops expired members first",
    )
    # 2. A known member's join is contact (forming and formed groups).
    text = edit(
        text,
        r"(\n(\s*))if let Some\(member\) = self\.members\.get_mut\(&member_id\) \{",
        r"\1if let Some(member) = self.members.get_mut(&member_id) {\n\2    _ = member.last_contact.replace(now);\n\2}"
        r"\1if let Some(member) = self.members.get_mut(&member_id) {",
        "join refreshes contact (forming)",
    )
    text = edit(
        text,
        r"(\n(\s*))match self\.members\.get_mut\(&member_id\) \{",
        r"\1if let Some(member) = self.members.get_mut(&member_id) {\n\2    _ = member.last_contact.replace(now);\n\2}"
        r"\1match self.members.get_mut(&member_id) {",
        "join refreshes contact (formed)",
    )
    # 3. The join loop's clock is read again after the follower's pause.
    text = edit(
        text,
        r"(\"join_loop\"\)\]\);\s*)let now = SystemTime::now\(\);",
        r"\1let mut now = SystemTime::now();",
        "join loop clock is mutable",
    )
    text = edit(
        text,
        r"(\"join_follower_pause\"\)\]\);\s*sleep\(Duration::from_millis\(PAUSE_MS as u64\)\)\.await;)",
        r"\1\n                now = SystemTime::now();",
        "join loop clock after the pause",
    )
    # 4. A shorter follower pause.
    text = edit(
        text,
        r"const PAUSE_MS: u128 = 3_000;",
        "const PAUSE_MS: u128 = 500; // runnel: group fix",
        "follower pause",
    )
    # 5. A forming group with no leader (the leader's session expired while it formed)
    #    takes no sync: the member is told to rejoin, and the join that follows names the
    #    new leader and hands it the member list. Without this, a follower holding a join
    #    answer that named the dead leader synced with no assignments, was taken as the
    #    leader, and the group formed with every partition assigned to nobody (seen in the
    #    scale-out kill test: a group's members held no partitions for minutes).
    text = edit(
        text,
        r"(\.leader\s*\.as_ref\(\)\s*)"
        r"\.is_some_and\(\|leader_id\| member_id != leader_id\.as_str\(\)\)",
        r"\1.is_none_or(|leader_id| member_id != leader_id.as_str()) // runnel: group fix",
        "forming group without a leader takes no sync",
    )
    # 6. A forming group that drops an expired member moves one generation on, so a sync
    #    made with the member list of before (a leader's assignment that includes the dead
    #    member) is refused and the members join again.
    text = edit(
        text,
        r"Self::Forming\(mut inner\) => \{\s*"
        r"_ = inner\.missed_heartbeat\(group_id, now\);\s*"
        r"Self::Forming\(inner\)",
        "Self::Forming(mut inner) => {\n"
        "                if inner.missed_heartbeat(group_id, now) {\n"
        "                    inner.generation_id += 1; // runnel: group fix\n"
        "                }\n"
        "                Self::Forming(inner)",
        "forming group drops a member with the next generation",
    )
    path.write_text(text)


if __name__ == "__main__":
    main()
