// placeholder: piece B replaces this file
