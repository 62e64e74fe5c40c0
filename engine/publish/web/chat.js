// loradeck's browser chat: the run's GGUF file, run by wllama (llama.cpp in WebAssembly) in
// this browser. Everything it loads comes from the folder it was served from.
import { Wllama } from './wllama/index.js';

const $ = (id) => document.getElementById(id);
const cfg = JSON.parse($('loradeck-config').textContent);
const params = new URLSearchParams(location.search);
const lines = [];
const keep = (...args) => lines.push(args.map(String).join(' '));
const history = [];
let wllama = null;

$('title').textContent = `${cfg.model} · run ${cfg.run}`;
$('about').textContent = `${cfg.file} (${cfg.quant}, ${(cfg.bytes / 1e6).toFixed(1)} MB) · wllama ${cfg.wllama}`;

function backendName() {
  // where llama.cpp put the weights, as its load log says ("load_tensors: CPU model buffer")
  const devices = lines.map((l) => l.match(/load_tensors:\s+(\S+) model buffer size/))
    .filter(Boolean).map((m) => m[1]).filter((d) => !d.startsWith('CPU'));
  if (devices.length) return devices.includes('WebGPU') ? 'WebGPU' : devices[0];
  const n = wllama.getNumThreads ? wllama.getNumThreads() : 1;
  return `CPU, ${n} thread${n === 1 ? '' : 's'}`;
}

function tps_of(chunks, first, ended) {
  return first !== null && ended > first && chunks > 1 ? (chunks - 1) / ((ended - first) / 1000) : 0;
}

function addTurn(role, text) {
  const div = document.createElement('div');
  div.className = `turn ${role}`;
  div.textContent = text;
  $('log').appendChild(div);
  return div;
}

async function ask(prompt, temperature, maxTokens) {
  const reply = $('reply');
  reply.textContent = '';
  delete reply.dataset.done;
  history.push({ role: 'user', content: prompt });
  addTurn('user', prompt);
  const shown = addTurn('assistant', '…');
  const system = $('system').value.trim();
  const messages = system ? [{ role: 'system', content: system }, ...history] : [...history];
  $('send').disabled = true;
  const started = performance.now();
  let first = null;
  let chunks = 0;
  let text = '';
  const stream = await wllama.createChatCompletion({
    messages, max_tokens: maxTokens, temperature, stream: true,
    ...(temperature === 0 ? { top_k: 1 } : {}),
  });
  for await (const chunk of stream) {
    const piece = chunk.choices?.[0]?.delta?.content;
    if (!piece) continue;
    if (first === null) first = performance.now();
    chunks += 1;
    text += piece;
    shown.textContent = text;
    reply.textContent = text;
  }
  const ended = performance.now();
  window.loradeckTiming = { ...window.loradeckTiming, first_token_ms: first, done_ms: ended,
                            tokens: chunks, tokens_per_second: tps_of(chunks, first, ended) };
  history.push({ role: 'assistant', content: text });
  const tps = tps_of(chunks, first, ended);
  $('speed').textContent = `first token ${(((first ?? ended) - started) / 1000).toFixed(2)} s · ${tps.toFixed(1)} tokens/s`;
  reply.dataset.done = '1';
  $('send').disabled = false;
}

async function main() {
  wllama = new Wllama({ default: new URL('wllama/wllama.wasm', location.href).href },
    { logger: { debug: keep, log: keep, info: keep, warn: keep, error: keep } });
  const loadStart = performance.now();
  await wllama.loadModelFromUrl(new URL(cfg.file, location.href).href, {
    n_ctx: 2048,
    progressCallback: ({ loaded, total }) => {
      $('status').textContent = `loading the model: ${Math.round((100 * loaded) / (total || 1))}%`;
    },
  });
  $('backend').textContent = backendName();
  window.loradeckTiming = { loaded_ms: performance.now() };  // since the page's navigation
  $('status').textContent = `loaded in ${((performance.now() - loadStart) / 1000).toFixed(1)} s`;
  $('prompt').disabled = false;
  $('send').disabled = false;
  $('form').addEventListener('submit', (event) => {
    event.preventDefault();
    const prompt = $('prompt').value.trim();
    if (!prompt) return;
    $('prompt').value = '';
    ask(prompt, Number($('temperature').value), Number($('max_tokens').value))
      .catch((e) => { $('status').textContent = `error: ${e.message || e}`; });
  });
  $('prompt').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      $('form').requestSubmit();
    }
  });
  const asked = params.get('prompt');  // a link that asks: ?prompt=...&max_tokens=N&temperature=T
  if (asked) {
    const temperature = params.has('temperature') ? Number(params.get('temperature')) : 0.7;
    const maxTokens = params.has('max_tokens') ? Number(params.get('max_tokens')) : 256;
    $('temperature').value = temperature;
    $('max_tokens').value = maxTokens;
    await ask(asked, temperature, maxTokens);
  }
}

main().catch((e) => { $('status').textContent = `error: ${e.message || e}`; });
