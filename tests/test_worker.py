"""The page's inference worker in headless Chromium: off the main thread, newest drawing only,
and a fallback with its reason when a preferred backend cannot start."""

import time

import pytest

from tests.conftest import load, open_page

pytestmark = pytest.mark.browser


def test_the_model_runs_in_a_module_worker_not_on_the_main_thread(browser, server, mnist_test, torch_probabilities):
    page = open_page(browser, server, "flex")
    # One worker: the page spawns it first thing and loads the chosen build in it.
    assert [w.url.rsplit("/", 1)[1] for w in page.workers] == ["worker.bundle.js"]
    main_thread_wasm = page.evaluate(
        "performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.endsWith('.wasm'))"
    )
    assert main_thread_wasm == []  # the wasm is fetched and instantiated by the worker
    probs = page.evaluate("(img) => window.mnist.predict(img)", mnist_test.images[3].flatten().tolist())
    assert max(abs(a - b) for a, b in zip(probs, torch_probabilities("flex")[3].tolist())) <= 1e-4
    page.close()


@pytest.mark.parametrize("refusal_delay_s", [0, 1.5])
def test_the_worker_index_html_starts_early_is_the_one_used(browser, server, refusal_delay_s):
    """index.html starts the worker before the page's modules run, and the page loads its
    build in that worker (taken: one worker, one worker.bundle.js request); when that worker
    fails to start, the page starts another and keeps the backend asked for, whether the
    failure came before the page took the worker or after (its script refused 1.5 s late: CI
    once saw a busy machine do that, and the page fell back to another backend)."""
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url.rsplit("/", 1)[1]))
    load(page, f"{server}?backend=flex")
    assert [w.url.rsplit("/", 1)[1] for w in page.workers] == ["worker.bundle.js"]
    assert requests.count("worker.bundle.js") == 1 and page.evaluate("self.earlyWorker === undefined"), requests
    page.close()

    page = browser.new_page()
    refused = []

    def refuse_once(route):
        if refused:
            route.continue_()
        else:
            refused.append(route.request.url)
            time.sleep(refusal_delay_s)  # the page's modules run meanwhile
            route.fulfill(status=404, body="gone")

    page.route("**/worker.bundle.js", refuse_once)
    load(page, f"{server}?backend=flex")
    assert len(refused) == 1 and page.evaluate("window.mnist.backend") == "flex"
    assert len(page.evaluate("(img) => window.mnist.predict(img)", [0] * 784)) == 10
    page.close()


def test_while_a_prediction_runs_only_the_newest_drawing_is_classified_next(browser, server):
    """LatestOnly over a classifier that takes 50 ms: ten drawings submitted at once give two
    predictions, the first and the last; after drop(), a prediction in flight is not shown."""
    page = open_page(browser, server, "flex")
    result = page.evaluate("""async () => {
        const { LatestOnly } = await import('./inference.js');
        const started = [], shown = [];
        const slow = { predict: (px) => { started.push(px[0]);
            return new Promise((ok) => setTimeout(() => ok({ probs: [px[0]], ms: 50 }), 50)); } };
        const live = new LatestOnly(slow, (r) => shown.push(r.probs[0]), (e) => shown.push(String(e)));
        for (let i = 1; i <= 10; i++) live.submit([i]);
        await new Promise((ok) => setTimeout(ok, 300));
        const first = { started: [...started], shown: [...shown] };
        live.submit([11]);
        live.drop();                      // Clear while 11 is being classified
        await new Promise((ok) => setTimeout(ok, 150));
        live.submit([12]);
        await new Promise((ok) => setTimeout(ok, 150));
        return { first, started, shown };
    }""")
    assert result["first"] == {"started": [1, 10], "shown": [1, 10]}
    assert result["started"] == [1, 10, 11, 12] and result["shown"] == [1, 10, 12]
    page.close()


def test_without_webgpu_the_cpu_build_takes_over_with_the_reason(browser, server):
    """This Chromium runs without the WebGPU flags, so no adapter: asking for wgpu first must
    end on the CPU build, labelled with why (whether or not the wgpu build exists)."""
    page = open_page(browser, server, "flex")
    outcome = page.evaluate("""async () => {
        const { startFirstWorking } = await import('./inference.js');
        const { classifier, label, failures } = await startFirstWorking(['wgpu', 'flex']);
        const probs = (await classifier.predict(new Float32Array(784))).probs;
        return { label, failures, backend: classifier.backend, sum: probs.reduce((a, b) => a + b, 0) };
    }""")
    assert outcome["backend"] == "flex"
    assert outcome["label"].startswith("flex (") and "WebGPU" in outcome["label"]
    assert outcome["failures"][0].startswith("wgpu: ") and abs(outcome["sum"] - 1) < 1e-5
    page.close()


def test_when_no_backend_starts_the_error_names_each_one(browser, server):
    page = open_page(browser, server, "flex")
    message = page.evaluate("""async () => {
        const { startFirstWorking } = await import('./inference.js');
        try { await startFirstWorking(['nosuch', 'alsomissing']); return 'started'; }
        catch (err) { return err.message; }
    }""")
    assert message.startswith("nosuch: ") and "; alsomissing: " in message
    page.close()


@pytest.mark.parametrize("backend", ["fast-relaxed", "flex"])
def test_under_invoke_serve_predictions_go_through_shared_memory(
    browser, server, backend, mnist_test, torch_probabilities
):
    """`invoke serve` makes the page cross-origin isolated, so window.mnist.predict hands the
    image to the worker through a SharedArrayBuffer (web/channel.js): the same numbers as
    PyTorch, MC dropout and refusals as through messages, a teach message between two
    predictions is applied before the second one, and a request long after the last (the
    worker then blocked in Atomics.wait, no longer polling) is answered too."""
    page = open_page(browser, server, backend)
    assert page.evaluate("window.mnist.handoff") == "shared memory"
    images = mnist_test.images[:200].reshape(200, -1).tolist()
    probs = page.evaluate("(images) => Promise.all(images.map((img) => window.mnist.predict(img)))", images)
    assert (
        max(
            abs(a - b) for row, ref in zip(probs, torch_probabilities(backend)[:200].tolist()) for a, b in zip(row, ref)
        )
        <= 1e-5
    )
    out = page.evaluate(
        """async (img) => {
        const uncertain = await window.mnist.predictUncertain(img, { samples: 10 });
        const refusal = (p) => p.then(() => 'accepted', (err) => err.message);
        const short = await refusal(window.mnist.predict(img.slice(0, 100)));
        const tooMany = await refusal(window.mnist.predictUncertain(img, { samples: 100000 }));
        const before = await window.mnist.predict(img);
        const [taught, after] = await Promise.all([window.mnist.teach(img, 3), window.mnist.predict(img)]);
        await window.mnist.forget();
        const forgotten = await window.mnist.predict(img);
        // Long after the last answer: the worker stopped polling and waits in Atomics.wait.
        await new Promise((ok) => setTimeout(ok, 20));
        const later = await window.mnist.predict(img);
        return { uncertain, short, tooMany, before, after, forgotten, later };
    }""",
        images[0],
    )
    assert abs(sum(out["uncertain"]["probs"]) - 1) < 1e-4 and out["uncertain"]["mutualInformation"] >= 0
    assert "784" in out["short"], out["short"]
    assert "samples" in out["tooMany"], out["tooMany"]
    assert out["before"] == out["forgotten"] == out["later"]
    assert max(out["before"]) == out["before"][7]  # MNIST test digit 0 is a 7
    assert out["after"] != out["before"]  # taught "3": the prediction after the teach message sees it
    page.close()


def test_a_crash_rejects_a_prediction_waiting_on_shared_memory(browser, server, mnist_test):
    """A worker that stops while a prediction waits on the channel: that call and later ones
    reject with the reason instead of waiting forever."""
    page = open_page(browser, server, "flex")
    messages = page.evaluate(
        """async (img) => {
        const { InferenceWorker } = await import('./inference.js');
        const classifier = await InferenceWorker.start('flex');
        if (classifier.handoff !== 'shared memory') return [classifier.handoff];
        await classifier.predict(Float32Array.from(img));
        // Let the worker get back into Atomics.wait (one not yet there sees the next request
        // without being woken, and answers it); then it is never woken: it will not answer.
        const pause = () => new Promise((ok) => setTimeout(ok, 50));
        await pause();
        const notify = Atomics.notify;
        Atomics.notify = () => 0;
        const waiting = classifier.predict(Float32Array.from(img));
        await pause();  // the request is on the channel by now
        Atomics.notify = notify;
        classifier.worker.dispatchEvent(new ErrorEvent('error', { message: 'simulated crash' }));
        const outcome = (p) => p.then(() => 'answered', (err) => err.message);
        return [await outcome(waiting), await outcome(classifier.predict(Float32Array.from(img)))];
    }""",
        mnist_test.images[0].flatten().tolist(),
    )
    assert messages == ["the inference worker stopped: simulated crash"] * 2
    page.close()
