// The model picker: which trained models the page can run, and switching between them.
//
// The server lists the models it serves in config.json (`models`: name, url, architecture,
// summary, test_accuracy, parameters, bytes, embedded; `embedded`: the name of the model built
// into the wasm). The embedded one is ready at start; another is downloaded and loaded by the
// inference worker (`Classifier.fromBytes`) the first time it is picked, and kept. A user can
// also drop a .safetensors file trained with `invoke train` onto the page.

/**
 * Switches the worker's model and keeps a <select> in step.
 *
 * `onChange(name)` runs after every successful switch; a failed one rejects with the reason
 * and leaves both the worker's model and the select as they were.
 */
export class ModelPicker {
  /**
   * @param {import("./inference.js").InferenceWorker} classifier the running worker
   * @param {object} config the server's /config.json
   * @param {HTMLSelectElement} select the picker
   * @param {(name: string) => void} onChange
   */
  constructor(classifier, config, select, onChange) {
    Object.assign(this, { classifier, select, onChange });
    this.embedded = config.embedded || "embedded";
    /** name -> { url, architecture, summary, test_accuracy, parameters } (url null: embedded) */
    this.models = new Map();
    for (const m of config.models || []) this.models.set(m.name, { ...m, url: m.embedded ? null : m.url });
    if (!this.models.has(this.embedded)) this.models.set(this.embedded, { name: this.embedded, url: null });
    this.current = this.embedded;
    for (const name of this.models.keys()) this.addOption(name);
    select.value = this.current;
  }

  /** Names of the models that can be loaded. */
  get names() {
    return [...this.models.keys()];
  }

  addOption(name) {
    const m = this.models.get(name);
    const option = document.createElement("option");
    option.value = name;
    const accuracy = typeof m.test_accuracy === "number" ? `, ${(m.test_accuracy * 100).toFixed(2)}%` : "";
    const size = typeof m.parameters === "number" ? `, ${(m.parameters / 1000).toFixed(0)}k params` : "";
    option.textContent = `${name}${accuracy}${size}`;
    option.title = m.summary || m.architecture || "";
    this.select.appendChild(option);
  }

  /**
   * Switch to model `name`.
   * @returns {Promise<string>} the name; rejects with the reason (unknown name, download or
   *   load failure) and keeps the current model.
   */
  async load(name) {
    const m = this.models.get(name);
    try {
      if (!m) throw new Error(`no model called "${name}" (models: ${this.names.join(", ")})`);
      await this.classifier.loadModel(name, m.url);
    } finally {
      this.select.value = this.current; // the picker shows what runs, whatever happened
    }
    this.current = name;
    this.select.value = name;
    this.onChange(name);
    return name;
  }

  /**
   * Add a weights file the user dropped, then switch to it.
   * @param {File} file a .safetensors file
   * @returns {Promise<string>} its name (the file name without extension; made unique)
   */
  async addFile(file) {
    if (!file.name.endsWith(".safetensors")) throw new Error(`${file.name}: not a .safetensors file`);
    let name = file.name.replace(/\.safetensors$/, "");
    while (this.models.has(name)) name += "'";
    const bytes = new Uint8Array(await file.arrayBuffer());
    await this.classifier.loadModel(name, bytes); // refused files change nothing
    this.models.set(name, { name, url: null, summary: `dropped file ${file.name}` });
    this.addOption(name);
    this.current = name;
    this.select.value = name;
    this.onChange(name);
    return name;
  }
}
