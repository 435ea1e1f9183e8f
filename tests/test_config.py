from __future__ import annotations

from pathlib import Path

import pytest

from volt.config import ConfigError, load_config


def test_defaults_need_nothing() -> None:
    config = load_config(env={})
    assert config.api.host == "127.0.0.1"
    assert config.agent.metro == "local"
    assert config.store_url().startswith("sqlite+aiosqlite:///")


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "volt.toml"
    path.write_text('data_dir = "/srv/volt"\n[api]\nport = 9000\n[agent]\nmetro = "fra"\n')
    env = {"VOLT_API_PORT": "9100", "VOLT_AGENT_TIER": "premium", "VOLT_UNRELATED": "x"}
    config = load_config(path, env=env, overrides={"agent": {"metro": "ams"}})
    assert config.data_dir == "/srv/volt"
    assert config.api.port == 9100  # env beats the file
    assert config.agent.tier == "premium"
    assert config.agent.metro == "ams"  # flags beat env


def test_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "volt.toml"
    path.write_text("[scheduler]\nmissed_heartbeats = 5\n")
    assert load_config(env={"VOLT_CONFIG": str(path)}).scheduler.missed_heartbeats == 5


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"VOLT_API_PORT": "99999"}, "api.port"),
        ({"VOLT_API_PORT": "eighty"}, "api.port"),
        ({"VOLT_AGENT_HEARTBEAT_INTERVAL_S": "0"}, "agent.heartbeat_interval_s"),
        ({"VOLT_AGENT_METRO": "fra.1"}, "agent.metro"),
        ({"VOLT_AGENT_ENGINE": "tpu"}, "agent.engine"),
        ({"VOLT_LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_bad_values_name_their_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert str(info.value).startswith(field.rsplit(".", 1)[0])
    assert field.split(".")[-1] in str(info.value) or field.split(".")[0] in str(info.value)


def test_trailing_newline_is_not_a_valid_metro() -> None:
    with pytest.raises(ConfigError, match="agent"):
        load_config(env={"VOLT_AGENT_METRO": "fra\n"})


def test_unknown_keys_in_the_file_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "volt.toml"
    path.write_text("[api]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"api.*prot"):
        load_config(path, env={})


def test_unreadable_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[api\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})


def test_engine_socket_path_stays_short_for_deep_data_dirs(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 80) / ("e" * 80)
    config = load_config(env={"VOLT_DATA_DIR": str(deep)})
    assert len(str(config.engine_socket())) < 100  # AF_UNIX paths max out at 107 bytes


def test_an_empty_embedding_model_means_none() -> None:
    """volt up --no-embeddings hands its agent an empty value; it must load."""
    assert load_config(env={"VOLT_AGENT_EMBEDDING_MODEL": ""}).agent.embedding_model == ""
