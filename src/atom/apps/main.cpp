// atom: the single command-line entry point (generate, tokenize, detokenize, chat-template, env).
#include <cstdio>

int main(int argc, char** argv) {
  std::fprintf(stderr, "atom: no command yet\n");
  return 2;
}
