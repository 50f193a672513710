"""The Label Studio ML backend on a real port against a real hardscore server, without Label
Studio itself (tests/e2e/test_label_studio.py runs the real Label Studio): where the Label
Studio API key may go."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from hardscore_client.label_studio_server import BackendSettings, make_app

from server_process import ServerProcess


async def _setups(server: ServerProcess, settings: BackendSettings,
                  hostnames: list[str]) -> list[tuple[int, Any]]:
    runner = web.AppRunner(make_app(settings, server.target))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    answers = []
    try:
        async with aiohttp.ClientSession() as session:
            for hostname in hostnames:
                async with session.post(f"http://127.0.0.1:{port}/setup",
                                        json={"hostname": hostname}) as reply:
                    answers.append((reply.status, await reply.json()))
    finally:
        await runner.cleanup()
    return answers


def test_the_api_key_goes_only_to_the_first_setups_host(image_server):
    """Without --label-studio-url, whoever called /setup chose the host that then received the
    Label Studio API key: the first /setup's host is kept, another one is refused."""
    settings = BackendSettings(api_key="secret")
    answers = asyncio.run(_setups(image_server, settings, [
        "http://label-studio:8080", "http://label-studio:8080/", "http://attacker.example"]))
    assert [status for status, _ in answers] == [200, 200, 409]
    assert answers[2][1]["error"].startswith(
        "this backend serves the Label Studio at http://label-studio:8080 (its first /setup); "
        "a /setup naming 'http://attacker.example' is refused")


def test_a_configured_label_studio_url_is_never_replaced_by_setup(image_server):
    settings = BackendSettings(api_key="secret", label_studio_url="http://label-studio:8080")
    answers = asyncio.run(_setups(image_server, settings, [
        "http://elsewhere:1", "http://attacker.example"]))
    assert [status for status, _ in answers] == [200, 200]
