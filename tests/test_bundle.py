"""The page's bundles (tasks.bundle_page, esbuild): rebuilt when a module changes, left alone
when up to date, and a module that does not bundle is refused with esbuild's reason."""

import os
import shutil

import pytest
from invoke import Exit

import tasks


@pytest.fixture
def web(tmp_path, monkeypatch):
    """A copy of web/'s modules in ``tmp_path``, which ``tasks`` then takes for web/."""
    for module in tasks.page_modules():
        shutil.copy(module, tmp_path / module.name)
    esbuild_dir = tasks.npm_tools()
    monkeypatch.setattr(tasks, "WEB", tmp_path)
    monkeypatch.setattr(tasks, "TARGET", tmp_path / "target")
    monkeypatch.setattr(tasks, "npm_tools", lambda: esbuild_dir)
    return tmp_path


def edited(module):
    """Date the bundles one second before ``module``, as if it were edited after they were
    written (a file system's clock may not tell apart two writes in the same test)."""
    earlier = module.stat().st_mtime_ns - 1_000_000_000
    for bundle in tasks.PAGE_BUNDLES.values():
        os.utime(module.parent / bundle, ns=(earlier, earlier))


def test_an_edited_module_is_bundled_again_and_an_unchanged_one_is_not(web):
    assert not tasks.bundles_up_to_date()
    tasks.bundle_page()
    assert tasks.bundles_up_to_date()
    bundle = web / "worker.bundle.js"
    assert "the WebGPU build answers through messages" in bundle.read_text()
    written = bundle.stat().st_mtime_ns
    tasks.bundle_page()  # up to date: not written again
    assert bundle.stat().st_mtime_ns == written

    module = web / "worker.js"
    module.write_text(module.read_text().replace("answers through messages", "answers by message"))
    edited(module)
    assert not tasks.bundles_up_to_date()
    tasks.bundle_page()
    assert tasks.bundles_up_to_date()
    assert "the WebGPU build answers by message" in bundle.read_text()
    # The app's bundle holds the module the worker's shares with it (web/channel.js) too.
    assert "SharedArrayBuffer" in (web / "app.bundle.js").read_text()


def test_a_module_that_does_not_bundle_is_refused_with_the_reason(web):
    tasks.bundle_page()
    (web / "teach.js").write_text('import { nothing } from "./missing.js";\n')
    edited(web / "teach.js")
    with pytest.raises(Exit):
        tasks.bundle_page()
    assert not tasks.bundles_up_to_date()  # the last good bundles stay, marked stale
