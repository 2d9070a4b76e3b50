"""Talk to a BLSP model in the browser: a Gradio app, laid out as a Hugging Face Space (this file, the Hub files
`configuration_blsp.py`, `modeling_blsp.py`, `adapter_blsp.py`, `processing_blsp.py`, `audio_blsp.py`,
`pipeline_blsp.py` and requirements.txt).

    python app.py                                   # the miniature world's trained checkpoint, offline
    python app.py --model you/blsp-qwen2.5-7b       # any BLSP checkpoint: a local folder or a Hub id
    python app.py --model english/models/blsp-whisper-tiny.en-smollm2-135m \
        --speech_model_name_or_path converted/whisper-tiny.en --text_model_name_or_path converted/smollm2-135m-instruct
                                                    # an adapter-only checkpoint, its bases from local copies
    BLSP_MODEL=you/blsp-qwen2.5-7b python app.py    # the same, from the environment (a Space's variables)

Record from the microphone or upload a clip, write an instruction (one example per task is offered) and the answer is
streamed token by token. The conversation goes on: every earlier turn, with its audio, stays in the prompt, which
the checkpoint's processor renders (`apply_chat_template`, the model's one prompt renderer).
"""

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import gradio as gr
import torch
from transformers import HfArgumentParser, TextIteratorStreamer

from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import TASK_INSTRUCTIONS, BlspProcessor

HERE = os.path.dirname(os.path.abspath(__file__))
WORLD_MODEL = os.path.join(HERE, "world", "models", "blsp")
WORLD_CLIPS = os.path.join(HERE, "world", "data", "speech", "test_heldout_voice")


@dataclass
class DemoArguments:
    model: str = field(
        default=os.environ.get("BLSP_MODEL", WORLD_MODEL),
        metadata={"help": "BLSP checkpoint: a local folder or a Hub id (default: $BLSP_MODEL, else the world's)."},
    )
    speech_model_name_or_path: str | None = field(
        default=None, metadata={"help": "An adapter-only checkpoint's Whisper base, when not the one it names."}
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "An adapter-only checkpoint's LLM base, when not the one it names."}
    )
    examples_dir: str = field(
        default=WORLD_CLIPS, metadata={"help": "An audiofolder (metadata.jsonl + clips) to pick example clips from."}
    )
    num_examples: int = field(default=4, metadata={"help": "Example clips offered under the inputs."})
    server_name: str = field(
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        metadata={"help": "Address to serve on: 0.0.0.0 serves other machines (a Space sets $GRADIO_SERVER_NAME)."},
    )
    server_port: int = field(default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    share: bool = field(default=False, metadata={"help": "Also serve through a public gradio.live link."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run code the checkpoint ships (its own model or tokenizer class files). Off by default: "
            "BLSP checkpoints load without it."
        },
    )
    threads: int = field(default=0, metadata={"help": "Torch CPU threads (0: torch's default)."})


def task_instructions(model: str) -> dict[str, str]:
    """Example instructions, one per task: the miniature world's for its checkpoint, else the evaluation's
    (`processing_blsp.TASK_INSTRUCTIONS`)."""
    if os.path.abspath(model) == WORLD_MODEL:
        sys.path.insert(0, HERE)
        from world.language import INSTRUCTIONS

        return dict(INSTRUCTIONS)
    return TASK_INSTRUCTIONS


def example_clips(directory: str, count: int) -> list[str]:
    """The first `count` clips listed in an audiofolder's metadata.jsonl (none if it is absent)."""
    metadata = os.path.join(directory, "metadata.jsonl")
    if not os.path.exists(metadata):
        return []
    with open(metadata, encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    return [os.path.join(directory, row["file_name"]) for row in rows[:count]]


def user_turn(instruction: str, audio: str | None, prompt_layout: str) -> dict:
    """A user message holding the instruction and, when given, the audio, in the processor's prompt layout."""
    content = [{"type": "text", "text": instruction}] if instruction else []
    if audio:
        speech = [{"type": "audio", "path": audio}]
        content = speech + content if prompt_layout == "speech_first" else content + speech
    return {"role": "user", "content": content}


def shown_turn(message: dict) -> dict:
    """A conversation message as the chat window shows it: audio items as their file name."""
    parts = [
        item["text"] if item["type"] == "text" else f"(audio: {os.path.basename(item['path'])})"
        for item in message["content"]
    ]
    return {"role": "user", "content": "\n".join(parts)}


class SpeechChat:
    """A BLSP model and processor answering conversations, streaming the answer."""

    def __init__(self, model: str, trust_remote_code: bool = False, **bases):
        """`bases`: `speech_model_name_or_path`/`text_model_name_or_path` for an adapter-only checkpoint's bases;
        `trust_remote_code`: also run code the checkpoint ships beside our classes (a tokenizer class file)."""
        self.model = BlspForConditionalGeneration.from_pretrained(model, **bases).eval()
        self.processor = BlspProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)

    def inputs(self, conversation: list[dict], max_new_tokens: int):
        """The model inputs of `conversation`, or a ValueError (an `AudioInputError` for audio) saying why not."""
        system = [{"role": "system", "content": self.processor.system_prompt}] if self.processor.system_prompt else []
        inputs = self.processor.apply_chat_template(system + self.processor.read_audio_items(conversation))
        speech_tokens = int((inputs["input_ids"] == self.processor.speech_token_id).sum())
        prompt_tokens = inputs["input_ids"].shape[1] - speech_tokens
        limit = getattr(self.model.config.text_config, "max_position_embeddings", None)
        error = self.processor.context_error(speech_tokens, prompt_tokens, max_new_tokens, limit)
        if error:
            raise ValueError(f"The conversation is {error}")
        return inputs

    def stream(self, conversation: list[dict], max_new_tokens: int, temperature: float):
        """Yield the answer to `conversation` as it grows, token by token (greedy at temperature 0)."""
        yield from self.answer(self.inputs(conversation, max_new_tokens), max_new_tokens, temperature)

    def answer(self, inputs, max_new_tokens: int, temperature: float):
        """Yield the answer to model inputs as it grows; a failure in generation is raised here, not lost."""
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        kwargs = {**inputs, **sampling, "max_new_tokens": max_new_tokens, "streamer": streamer}
        failures = []
        worker = threading.Thread(target=self.generate, args=(failures,), kwargs=kwargs)
        worker.start()
        answer = ""
        for piece in streamer:
            answer += piece
            yield answer.strip()
        worker.join()
        if failures:
            raise failures[0]

    @torch.inference_mode()
    def generate(self, failures: list, **kwargs):
        try:
            self.model.generate(**kwargs)
        except Exception as error:  # ends the stream; `answer` raises it in the caller's thread
            failures.append(error)
            kwargs["streamer"].end()


def respond(chat: SpeechChat, audio, instruction: str, max_new_tokens, temperature, conversation: list[dict]):
    """One turn of the page: yields (chat window, conversation state, audio, status). A turn that fails raises
    `gr.Error` with the reason and leaves the conversation state as it was, so later turns work."""
    if not audio and not instruction.strip():
        raise gr.Error("Record or upload audio, or write an instruction.")
    if not conversation and not audio:
        raise gr.Error("Start the conversation with audio: record it or upload a clip.")
    if chat.processor.speech_token in instruction:
        raise gr.Error(
            f"The instruction holds {chat.processor.speech_token!r}, the model's speech placeholder: remove it."
        )
    turn = conversation + [user_turn(instruction.strip(), audio, chat.processor.prompt_layout)]
    try:
        inputs = chat.inputs(turn, int(max_new_tokens))
    except ValueError as error:  # unreadable audio (AudioInputError), too long for the model
        raise gr.Error(str(error)) from error
    shown = [shown_turn(m) if m["role"] == "user" else m for m in turn]
    start, answer = time.perf_counter(), ""
    yield shown + [{"role": "assistant", "content": ""}], conversation, None, "Answering…"
    try:
        for answer in chat.answer(inputs, int(max_new_tokens), float(temperature)):
            yield shown + [{"role": "assistant", "content": answer}], conversation, None, "Answering…"
    except Exception as error:
        raise gr.Error(f"Generation failed: {error}") from error
    conversation = turn + [{"role": "assistant", "content": answer}]
    status = f"Answered in {time.perf_counter() - start:.1f} s."
    yield shown + [{"role": "assistant", "content": answer}], conversation, None, status


def build_demo(chat: SpeechChat, instructions: dict[str, str], clips: list[str], title: str) -> gr.Blocks:
    """The page: chat window, audio (microphone or upload), instruction, generation settings, examples."""

    def turn(audio, instruction, max_new_tokens, temperature, conversation):
        yield from respond(chat, audio, instruction, max_new_tokens, temperature, conversation)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nTalk or upload a clip and give an instruction; follow-up questions go on from there.")
        conversation = gr.State([])
        chatbot = gr.Chatbot(label="Conversation", elem_id="conversation", height=440)
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech", elem_id="speech")
            with gr.Column():
                instruction = gr.Textbox(label="Instruction", value=next(iter(instructions.values())), elem_id="ask")
                gr.Examples(
                    [[text] for text in instructions.values()],
                    [instruction],
                    label="Instructions per task",
                    example_labels=list(instructions),
                )
        with gr.Accordion("Generation", open=False):
            max_new_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens", elem_id="max_new_tokens")
            temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0: greedy)")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("New conversation", elem_id="clear")
        if clips:
            gr.Examples(clips, [audio], label="Example clips")
        outputs = [chatbot, conversation, audio, status]
        send.click(turn, [audio, instruction, max_new_tokens, temperature, conversation], outputs)
        clear.click(lambda: ([], [], None, ""), None, outputs)
    return demo


def main():
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == WORLD_MODEL and not os.path.isdir(WORLD_MODEL):
        raise SystemExit(f"{WORLD_MODEL} is missing (python -m world.build_demo makes it): pass --model or BLSP_MODEL.")
    bases = {"speech_model_name_or_path": args.speech_model_name_or_path}
    bases["text_model_name_or_path"] = args.text_model_name_or_path
    bases = {key: value for key, value in bases.items() if value}
    chat = SpeechChat(args.model, trust_remote_code=args.trust_remote_code, **bases)
    clips = example_clips(args.examples_dir, args.num_examples)
    demo = build_demo(chat, task_instructions(args.model), clips, f"BLSP speech chat ({os.path.basename(args.model)})")
    demo.queue().launch(
        server_name=args.server_name,
        server_port=args.server_port,
        share=args.share,
        allowed_paths=[os.path.abspath(args.examples_dir)],
    )


if __name__ == "__main__":
    main()
