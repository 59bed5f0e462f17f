"""runtime"""

# what can say the model's words (`EngineConfig.voice`): "words" the corpus voice's unit per emitted word
# (runtime/word_voice.py), "mel" the learned mel head and the vocoder. Here, free of torch, for the CLI.
VOICES = ("words", "mel")
