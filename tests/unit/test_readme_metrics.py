"""README's list of Tetragon metrics "not sent yet" against what the agent's collector sends."""
from __future__ import annotations

import re
from pathlib import Path

from tests.unit.test_pipeline_metrics import EXEC
from vigil.agent.agent import Agent
from vigil.agent.config import AgentConfig
from vigil.agent.metrics import AgentCollector
from vigil.events.source import ReplaySource

README = Path(__file__).resolve().parents[2] / "README.md"


def not_sent_yet() -> list[str]:
    """The metric names of README's "Not sent yet: ..." sentence (up to its full stop); none
    when it has no such sentence (every family is sent)."""
    text = " ".join(README.read_text().split())
    m = re.search(r"Not sent yet: (.*?)\.(?: |$)", text)
    return re.findall(r"`(tetragon_[a-z_]+)`", m.group(1)) if m else []


def test_readme_does_not_call_a_sent_metric_unsent(tmp_path: Path):
    """README listed five families as not sent yet that the agent sends (missed link probes,
    map delete errors, data cache misses, msg_op, handling latency): every family the
    collector offers, with or without samples, must be off that list."""
    agent = Agent(AgentConfig(export_filename=str(tmp_path / "e.log"), server_address="", node_name="n1"),
                  source=ReplaySource([EXEC], batch=7))
    agent.start()
    try:
        agent.run()
        sent = {fam.name.removesuffix("_total") for fam in AgentCollector(agent.control).collect()}
    finally:
        agent.close()
    listed = not_sent_yet()
    assert [n for n in listed if n.removesuffix("_total") in sent] == []
