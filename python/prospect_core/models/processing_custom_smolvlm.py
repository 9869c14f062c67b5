"""CustomSmolVLMProcessor: the transformers processor, plus the streaming helpers the original adds."""

import torch

from prospect_core.utils.chat_formatter import ChatFormatter


class CustomSmolVLMProcessor:
    def __init__(self, base_processor):
        self.base_processor = base_processor
        self.tokenizer = base_processor.tokenizer
        self.image_processor = base_processor.image_processor

    def __call__(self, *args, **kwargs):
        return self.base_processor(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def get_input_sequence(self, num_images: int, messages, first_turn: bool = False):
        """(input_ids [1, T], text): the messages (the chat template on the first turn, `Role: content` lines
        after it), then one <image> per image."""
        if not isinstance(num_images, int) or num_images < 0:
            raise ValueError(f"num_images expected an int >= 0, got {num_images!r}")
        if not messages:
            text = ""
        elif first_turn:
            text = ChatFormatter(self.tokenizer).apply_chat_template(messages)
        else:
            text = "".join(self._add_message(m) for m in messages)
        text += "<image>" * num_images
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"], text

    @staticmethod
    def _add_message(message) -> str:
        return f"{message.get('role', 'user').capitalize()}: {message.get('content', '')}\n"

    def add_last_assistant_message(self, model_inputs, last_msg):
        """Puts the last message's tokens (or text) in front of model_inputs['input_ids']."""
        if last_msg is None:
            return model_inputs
        ids = model_inputs["input_ids"]
        if isinstance(last_msg, str):
            last_msg = self.tokenizer(last_msg, return_tensors="pt", add_special_tokens=False)["input_ids"]
        model_inputs["input_ids"] = torch.cat([last_msg.to(ids.device).view(1, -1), ids], dim=-1)
        return model_inputs

    @staticmethod
    def cleanup_text(text: str):
        """(text, role): special tokens removed, and a leading 'Assistant:'/'User:'/'System:' split off."""
        text = text.strip()
        for token in ("<image>", "<|image|>", "<|endoftext|>", "<|end|>", "<end_of_utterance>"):
            text = text.replace(token, "")
        head, sep, rest = text.partition(":")
        if sep and head.strip().lower() in ("assistant", "user", "system"):
            return rest.strip(), head.strip().lower()
        return ("" if text == "." else text), None
