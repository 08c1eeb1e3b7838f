// Progress of background tasks (re-ingest, persona eval): poll their state until they end.
"use strict";
function watch(box) {
  const url = box.dataset.url;
  const bar = box.querySelector("progress");
  const state = box.querySelector(".task-state");
  const count = box.querySelector(".task-count");
  const message = box.querySelector(".task-message");
  const unit = count.textContent.includes("questions") ? "questions" : "files";
  async function tick() {
    let task;
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) return;
      task = await response.json();
    } catch (error) {
      setTimeout(tick, 2000);
      return;
    }
    bar.max = Math.max(task.total, 1);
    bar.value = task.done;
    state.textContent = task.state;
    count.textContent = unit === "files"
      ? `${task.done}/${task.total} files, ${task.chunks} chunks`
      : `${task.done}/${task.total} questions`;
    message.textContent = task.message;
    box.dataset.state = task.state;
    if (task.state === "running") {
      setTimeout(tick, 500);
    } else if (box.dataset.reload && box.dataset.seenRunning) {
      window.location.reload();
    }
    if (task.state === "running") box.dataset.seenRunning = "1";
  }
  if (state.textContent.trim() === "running") box.dataset.seenRunning = "1";
  tick();
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-task]").forEach(watch);
});
